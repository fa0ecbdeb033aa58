"""Frame-rate conversion to the engine's 24 fps: motion-compensated interpolation, or frame repetition.

Wan 2.1/2.2 14B render at 16 fps; every engine output is 24 fps. `to_fps` gets there in one of two ways and
says which in the record it returns (put it in the output's metadata, e.g. `metadata["fps_conversion"]`):

- `"minterpolate"` (default): ffmpeg's motion-compensated interpolation filter, run through PyAV's filter
  graph, with `MINTERPOLATE_OPTIONS`. Each new frame is built from motion vectors between its two neighbours,
  so motion stays smooth (no 2:1 judder) at the cost of ~0.1 s of CPU per output frame at 832x480.
- `"repeat"`: output frame k shows source frame floor(k * src / dst). From 16 to 24 fps every second source
  frame is shown twice (cadence 2, 1): exact copies, instant, but the motion judders.

Frame-count rule (both methods): a clip of N frames at `src` fps covers N / src seconds; the output has the
frames whose time k / dst falls inside it, M = ceil(N * dst / src), so 16 -> 24 fps gives exactly 1.5 N for even
N (80 -> 120) and 1.5 N rounded up for odd N (81 -> 122). Output frames after the last source frame's time (the
last 1-2 here) repeat it (`held_last` in the record): there is nothing later to interpolate towards.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction
from typing import Any

import numpy as np

from engine._core.errors import InputError

from .writer import as_batch, check_fps

# mi_mode=mci: motion-compensated interpolation (not "blend" cross-fades or "dup" copies).
# me_mode=bilat, me=epzs: bilateral motion estimation from the new frame's time with the EPZS search, ffmpeg's
#   defaults; on a translating test pattern bilat beat bidir by 1.8 dB PSNR and ran 1.5x faster.
# mb_size=8: 8x8 blocks instead of 16x16 follow small moving parts (faces, hands) better: +1.6 dB there, same speed.
# search_param=32: motion search range in pixels (default), enough for Wan's motion at 16 fps.
# mc_mode=obmc, vsbmc=0: overlapped block compensation; the adaptive and variable-size variants measured no better.
# scd=fdiff, scd_threshold=10: at a scene cut (frame difference above 10) repeat instead of morphing two shots.
MINTERPOLATE_OPTIONS = {
    "mi_mode": "mci",
    "mc_mode": "obmc",
    "me_mode": "bilat",
    "me": "epzs",
    "mb_size": "8",
    "search_param": "32",
    "vsbmc": "0",
    "scd": "fdiff",
    "scd_threshold": "10",
}
METHODS = ("minterpolate", "repeat")
COUNT_RULE = "ceil(frames_in * dst_fps / src_fps)"
_LOOKAHEAD = 3  # copies of the last frame pushed after it: minterpolate holds back its last frames otherwise


def output_frame_count(n: int, src_fps, dst_fps) -> int:
    """M = ceil(N * dst / src): the output frames whose time k / dst lies inside the clip's N / src seconds."""
    src, dst = check_fps(src_fps, "source fps"), check_fps(dst_fps, "target fps")
    return math.ceil(Fraction(n) * dst / src)


def repeat_indices(n: int, src_fps, dst_fps) -> np.ndarray:
    """Source frame shown by each output frame under `"repeat"`: floor(k * src / dst), k = 0..M-1."""
    src, dst = check_fps(src_fps, "source fps"), check_fps(dst_fps, "target fps")
    m = output_frame_count(n, src, dst)
    idx = np.array([math.floor(Fraction(k) * src / dst) for k in range(m)], dtype=np.int64)
    return np.minimum(idx, n - 1)


def minterpolate_filter(dst_fps) -> str:
    """The filter string used, e.g. `minterpolate=fps=24:mi_mode=mci:...` (recorded with every conversion)."""
    dst = check_fps(dst_fps, "target fps")
    opts = ":".join(f"{k}={v}" for k, v in MINTERPOLATE_OPTIONS.items())
    return f"minterpolate=fps={dst.numerator}/{dst.denominator}:{opts}"


def _cadence(src: Fraction, dst: Fraction) -> list[int]:
    """How many times each source frame of one repeating cycle is shown (16 -> 24: [2, 1]; 30 -> 24: a 0 is a
    dropped frame)."""
    cycle = (src / dst).numerator  # src / dst = p / q: q output frames show p source frames, then it repeats
    idx = repeat_indices(cycle, src, dst)
    return [int((idx == i).sum()) for i in range(cycle)]


def _minterpolate(arr: np.ndarray, src: Fraction, dst: Fraction, m: int) -> list[np.ndarray]:
    import av

    h, w = arr.shape[1:3]
    graph = av.filter.Graph()
    buf = graph.add_buffer(width=w, height=h, format="rgb24", time_base=1 / src)
    # minterpolate works on YUV; 4:4:4 keeps the colour at full resolution (and odd sides legal)
    chain = [
        buf,
        graph.add("format", "yuv444p"),
        graph.add("minterpolate", minterpolate_filter(dst).removeprefix("minterpolate=")),
        graph.add("format", "rgb24"),
        graph.add("buffersink"),
    ]
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    sink = chain[-1]
    out: list[np.ndarray] = []

    def drain() -> None:
        while len(out) < m:
            try:
                frame = sink.pull()
            except (av.BlockingIOError, av.EOFError):
                return
            out.append(frame.to_ndarray(format="rgb24"))

    for i in range(arr.shape[0] + _LOOKAHEAD):
        vf = av.VideoFrame.from_ndarray(arr[min(i, arr.shape[0] - 1)], format="rgb24")
        vf.pts, vf.time_base = i, 1 / src
        buf.push(vf)
        drain()
        if len(out) >= m:
            break
    else:
        buf.push(None)
        drain()
    return out


def to_fps(frames, src_fps, dst_fps=24, method: str = "minterpolate") -> tuple[np.ndarray, dict[str, Any]]:
    """Convert a clip's frames from `src_fps` to `dst_fps` (see the module docstring for methods and frame count).

    Args:
        frames: (F, H, W, 3) uint8 or float in [0, 1] (or a list of frames / PIL images).
        src_fps: the frame rate the frames were rendered at (16 for Wan 14B).
        dst_fps (defaults to 24): the output rate.
        method: `"minterpolate"` (motion-compensated) or `"repeat"` (frame repetition).

    Returns:
        (frames, record): (M, H, W, 3) uint8, and a dict with `method`, `filter`, `library`, `src_fps`, `dst_fps`,
        `frames_in`, `frames_out`, `count_rule`, `held_last` and `seconds` (wall time, for benchmarks). Equal
        rates return the frames unchanged with method `"none"`.
    """
    src, dst = check_fps(src_fps, "source fps"), check_fps(dst_fps, "target fps")
    if method not in METHODS:
        raise InputError(f"unknown frame-rate method '{method}': use one of {', '.join(METHODS)}")
    arr = as_batch(frames)
    n = arr.shape[0]
    if n == 0:
        raise InputError("no frames to convert: the clip is empty; check the render's num_frames")
    t0 = time.perf_counter()
    m = output_frame_count(n, src, dst)
    last_t = Fraction(n - 1) / src  # time of the last source frame
    record: dict[str, Any] = {
        "method": method,
        "src_fps": float(src),
        "dst_fps": float(dst),
        "frames_in": n,
        "frames_out": m,
        "count_rule": COUNT_RULE,
        "held_last": sum(1 for k in range(m) if Fraction(k) / dst > last_t),
    }
    if src == dst:
        record.update(method="none", frames_out=n, held_last=0, seconds=round(time.perf_counter() - t0, 4))
        return arr, record
    if method == "repeat":
        out = arr[repeat_indices(n, src, dst)]
        record.update(
            pattern="output frame k shows source frame floor(k * src_fps / dst_fps)", cadence=_cadence(src, dst)
        )
    else:
        import av

        frames_out = _minterpolate(arr, src, dst, m)
        short = m - len(frames_out)
        if short > 0:  # not seen in practice (the last frame is pushed _LOOKAHEAD extra times); never silent
            frames_out += [frames_out[-1] if frames_out else arr[-1]] * short
            record["padded_end"] = short
        out = np.stack(frames_out[:m])
        record.update(
            filter=minterpolate_filter(dst), library=f"ffmpeg {av.ffmpeg_version_info} (PyAV {av.__version__})"
        )
    record["seconds"] = round(time.perf_counter() - t0, 4)
    return out, record


__all__ = [
    "COUNT_RULE",
    "METHODS",
    "MINTERPOLATE_OPTIONS",
    "minterpolate_filter",
    "output_frame_count",
    "repeat_indices",
    "to_fps",
]
