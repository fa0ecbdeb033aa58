"""Reading clips back for stitching: size, frame rate and frames of a video file, with one-line errors.

The scorer has its own damage-tolerant decoder (engine/scoring/media.py); stitching wants the opposite: a clip
that does not decode whole is refused, since a sequence with a hole in it is not a deliverable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine._core.errors import InputError


@dataclass(frozen=True)
class ClipInfo:
    path: Path
    width: int
    height: int
    fps: float | None
    frames: int  # from the container; 0 when it does not say


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:160]


def _open(path: Path):
    import av

    if not path.is_file():
        raise InputError(f"clip not found: '{path}': check the path")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise InputError(f"cannot open clip '{path}' ({_first_line(e)}): the file is damaged or not a video") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"'{path}' has no video stream: give a video file (MP4, MOV, WebM)")
    return container


def probe_clip(path: str | os.PathLike) -> ClipInfo:
    """Size, frame rate and (container) frame count of a video file, without decoding it."""
    path = Path(path)
    with _open(path) as container:
        s = container.streams.video[0]
        rate = s.average_rate or s.guessed_rate
        return ClipInfo(
            path, s.codec_context.width, s.codec_context.height, float(rate) if rate else None, int(s.frames or 0)
        )


def iter_clip(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Every frame of the clip's first video stream as (H, W, 3) uint8 RGB, in order; a decode error is an
    `InputError` naming the file and the frame."""
    import av

    path = Path(path)
    container = _open(path)
    n = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
                n += 1
        except av.FFmpegError as e:
            raise InputError(
                f"clip '{path}' is damaged after frame {n} ({_first_line(e)}): re-render or re-export it"
            ) from None
    finally:
        container.close()


__all__ = ["ClipInfo", "iter_clip", "probe_clip"]
