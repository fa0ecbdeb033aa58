"""Stitching clips into one 24 fps MP4, with optional crossfades and an audio track that replaces any audio.

Clips are MP4 files (decoded with PyAV) or frame arrays, all of one size and already at the output frame rate
(convert 16 fps renders with `to_fps` first: stitching never changes a clip's timing behind your back). They are
streamed through the one `VideoWriter`, so only a crossfade's worth of frames is ever held in memory.

Crossfade: `crossfade_s` is rounded to k = round(crossfade_s * fps) frames. At each seam the last k frames of a clip
are blended with the first k of the next (blended here in numpy, linearly in RGB, weight (j + 1) / (k + 1) on the
incoming clip for j = 0..k-1, the same curve as ffmpeg's `xfade=fade`); the seam's 2k frames become k, so the
output has sum(frames) - k * (clips - 1) frames. Each clip needs k frames per seam it takes part in.

Audio: the clips' own audio is never copied. `audio` (any file ffmpeg reads) becomes the only audio track,
re-encoded to AAC and cut or padded with silence to the video's length.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine._core.errors import InputError

from .read import iter_clip, probe_clip
from .writer import VideoWriter, as_batch, check_fps

FPS_TOLERANCE = 0.01  # a clip file's rate may differ from the output's by this much (container rounding)


@dataclass(frozen=True)
class StitchResult:
    """What `stitch` wrote: frame count and duration (frames / fps), plus timings for benchmarks."""

    path: Path
    frames: int
    duration_s: float
    fps: float
    size: tuple[int, int]  # as encoded (even sides)
    crossfade_frames: int
    clip_frames: list[int] = field(default_factory=list)
    audio: dict[str, Any] | None = None
    encode_s: float = 0.0  # converting, encoding and muxing (the writer's share)
    decode_s: float = 0.0  # decoding clip files


@dataclass
class _Clip:
    label: str
    size: tuple[int, int]
    frames: int  # 0 when a file does not say
    path: Path | None = None
    array: np.ndarray | None = None

    def iter(self, timer: list[float]) -> Iterator[np.ndarray]:
        if self.array is not None:
            yield from self.array
            return
        it = iter_clip(self.path)
        while True:
            t0 = time.perf_counter()
            try:
                frame = next(it)
            except StopIteration:
                return
            finally:
                timer[0] += time.perf_counter() - t0
            yield frame


def _prepare(clips: Sequence, rate) -> list[_Clip]:
    out = []
    for i, clip in enumerate(clips, start=1):
        if isinstance(clip, (str, os.PathLike)):
            info = probe_clip(clip)
            if info.fps is not None and abs(info.fps - float(rate)) > FPS_TOLERANCE:
                raise InputError(
                    f"clip {i} ('{info.path.name}') is {info.fps:g} fps but the stitch is {float(rate):g} fps: "
                    f"convert it first (engine.video.to_fps)"
                )
            out.append(_Clip(f"clip {i} ('{info.path.name}')", (info.width, info.height), info.frames, path=info.path))
        else:
            arr = as_batch(clip)
            if arr.shape[0] == 0:
                raise InputError(f"clip {i} has no frames: drop it or re-render it")
            out.append(_Clip(f"clip {i}", (arr.shape[2], arr.shape[1]), arr.shape[0], array=arr))
    first = out[0]
    for c in out[1:]:
        if c.size != first.size:
            raise InputError(
                f"{c.label} is {c.size[0]}x{c.size[1]} but {first.label} is {first.size[0]}x{first.size[1]}: "
                "stitched clips must share one size (render them alike or use engine.video.resize_frames)"
            )
    return out


def _need(index: int, count: int, k: int) -> int:
    """Frames clip `index` needs: k for each seam it takes part in."""
    return k * ((index > 0) + (index < count - 1))


def _blend(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    return np.clip(a.astype(np.float32) * (1.0 - w) + b.astype(np.float32) * w + 0.5, 0, 255).astype(np.uint8)


def stitch(
    clips: Sequence,
    out: str | os.PathLike,
    fps=24,
    crossfade_s: float = 0.0,
    audio: str | os.PathLike | None = None,
    *,
    metadata: dict[str, Any] | None = None,
    crf: int = 18,
    preset: str = "medium",
) -> StitchResult:
    """Concatenate `clips` (MP4 paths or (F, H, W, 3) frame arrays) into one H.264 MP4 at `out`, atomically.

    Args:
        clips: the clips in order; all one size and at `fps`.
        out: destination `.mp4`.
        fps (defaults to 24): the output frame rate.
        crossfade_s (defaults to 0): crossfade length at each seam, in seconds (rounded to whole frames).
        audio: an audio file that becomes the only audio track (AAC, cut or padded to the video's length).
        metadata: stored in the MP4 `comment` tag and the sidecar, with a `stitch` record added.

    Returns:
        `StitchResult` with `frames` = sum(clip frames) - k * (clips - 1) and `duration_s` = frames / fps.
    """
    rate = check_fps(fps)
    clips = list(clips) if not isinstance(clips, (str, os.PathLike, np.ndarray)) else [clips]
    if not clips:
        raise InputError("no clips to stitch: give at least one clip")
    try:
        crossfade_s = float(crossfade_s)
    except (TypeError, ValueError):
        raise InputError(f"crossfade must be a number of seconds (got {crossfade_s!r})") from None
    if not math.isfinite(crossfade_s) or crossfade_s < 0:
        raise InputError(f"crossfade must be 0 or more seconds (got {crossfade_s}): use 0 for hard cuts")
    k = int(round(crossfade_s * float(rate))) if len(clips) > 1 else 0
    prepared = _prepare(clips, rate)
    for i, c in enumerate(prepared):
        if c.frames and c.frames < _need(i, len(prepared), k):
            raise InputError(
                f"{c.label} has {c.frames} frames, fewer than the {_need(i, len(prepared), k)} its "
                f"{crossfade_s:g} s crossfades need: shorten the crossfade or lengthen the clip"
            )
    if metadata is not None:
        metadata = {
            **metadata,
            "stitch": {
                "clips": [str(c.path) if c.path else f"{c.frames} frames" for c in prepared],
                "fps": float(rate),
                "crossfade_s": crossfade_s,
                "crossfade_frames": k,
                "crossfade": "linear RGB blend, weight (j+1)/(k+1) on the incoming clip (engine.video.stitch)",
                "audio": str(audio) if audio is not None else None,
            },
        }
    decode = [0.0]
    counts: list[int] = []
    with VideoWriter(out, rate, prepared[0].size, crf=crf, metadata=metadata, audio=audio, preset=preset) as writer:
        tail: list[np.ndarray] | None = None
        for ci, clip in enumerate(prepared):
            last = ci == len(prepared) - 1
            hold: deque[np.ndarray] = deque()
            n = 0
            for frame in clip.iter(decode):
                if tail is not None and n < k:
                    frame = _blend(tail[n], frame, (n + 1) / (k + 1))
                n += 1
                hold.append(frame)
                if last or len(hold) > k:  # the last k frames wait for the next clip's fade-in
                    writer.write(hold.popleft())
            if n < _need(ci, len(prepared), k):
                raise InputError(
                    f"{clip.label} has {n} frames, fewer than the {_need(ci, len(prepared), k)} its "
                    f"{crossfade_s:g} s crossfades need: shorten the crossfade or lengthen the clip"
                )
            counts.append(n)
            tail = list(hold) if (k and not last) else None
    return StitchResult(
        path=writer.path,
        frames=writer.frames,
        duration_s=writer.duration_s,
        fps=writer.fps,
        size=writer.size,
        crossfade_frames=k,
        clip_frames=counts,
        audio=writer.audio_record,
        encode_s=round(writer.encode_s, 4),
        decode_s=round(decode[0], 4),
    )


__all__ = ["StitchResult", "stitch"]
