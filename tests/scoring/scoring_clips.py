"""Short synthetic clips for the scoring tests (built from the test photos into tmp folders)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from engine.identity.images import load_image
from engine.scoring.demo import render_frames, write_video

SIZE = (640, 360)


def single_person_clip(sprite, out: Path, frames: int = 48) -> Path:
    return write_video(render_frames([(sprite, frames)], SIZE), out)


def no_face_clip(out: Path, frames: int = 24) -> Path:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    return write_video((np.roll(base, 8 * i, axis=1) for i in range(frames)), out)


def group_background(faces_dir: Path) -> np.ndarray:
    """A 640x360 crop of the group photo with three of its faces, each larger than the pasted face."""
    import cv2

    img = load_image(Path(faces_dir) / "group_t1.jpg")[150:560, 0:700]
    img = cv2.resize(img, None, fx=640 / 700, fy=640 / 700, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img[:360, :640])


def group_clip(faces_dir: Path, sprite, out: Path, frames: int = 24) -> Path:
    """The group crop with a small obama head pasted at the lower right (static)."""
    bg = group_background(faces_dir)
    it = render_frames([(sprite, frames)], SIZE, face_frac=0.22, background=bg, motion=False, center=(0.86, 0.72))
    return write_video(it, out)


# ----- damaged files (real H.264 clips, then broken the way downloads and crashed renders break) -----------


def write_clip(frames, out: Path, *, faststart: bool = False, fps: int = 24) -> Path:
    """H.264 MP4 with PyAV. `faststart` puts the moov index before the frame data, so a truncated copy keeps a
    readable prefix (without it the index is at the end and a truncated file cannot be opened at all)."""
    import av

    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(out), mode="w", format="mp4", options=options) as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
                stream.options = {"crf": "20", "preset": "veryfast"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out


def mp4_atoms(data: bytes) -> list[tuple[str, int, int, int]]:
    """Top-level MP4 boxes as (type, offset, size, header size)."""
    out, i = [], 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[i + 8 : i + 16])[0], 16
        elif size == 0:
            size = len(data) - i
        out.append((kind.decode("latin-1"), i, size, header))
        i += size
    return out


def corrupt_mdat(src: Path, out: Path, *, at: float = 0.5, length: int = 4096) -> Path:
    """A copy of `src` with `length` bytes in the middle of the frame data (the mdat payload) overwritten."""
    data = bytearray(src.read_bytes())
    _, off, size, header = next(a for a in mp4_atoms(bytes(data)) if a[0] == "mdat")
    start = off + header + int((size - header) * at)
    data[start : start + length] = b"\xff" * length
    out.write_bytes(bytes(data))
    return out


def truncate(src: Path, out: Path, keep: float) -> Path:
    """The first `keep` share of `src` (a download or render that stopped part-way)."""
    data = src.read_bytes()
    out.write_bytes(data[: int(len(data) * keep)])
    return out


def preroll_trimmed(src: Path, out: Path, drop: int) -> Path:
    """A lossless remux whose timestamps start `drop` frames before 0: the muxer writes an edit list, and decoders
    drop those frames (what `ffmpeg -ss ... -c copy` makes). The container's frame count still includes them."""
    import av

    with av.open(str(src)) as inp, av.open(str(out), mode="w", format="mp4") as dst:
        s = inp.streams.video[0]
        o = dst.add_stream_from_template(s)
        step = int(round(1 / (s.time_base * s.average_rate)))
        for packet in inp.demux(s):
            if packet.dts is None:
                continue
            packet.pts -= drop * step
            packet.dts -= drop * step
            packet.stream = o
            dst.mux(packet)
    return out
