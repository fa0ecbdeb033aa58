"""Video files: the one MP4 writer, frame-rate conversion to 24 fps, stitching with crossfades and audio, resizing.

See docs/video.md ("Video files: writing, frame rate, stitching, audio").
"""

from __future__ import annotations

from .fps import MINTERPOLATE_OPTIONS, output_frame_count, to_fps
from .resize import MAX_OUTPUT, fit_size, resize_frames
from .stitch import StitchResult, stitch
from .writer import VideoWriter

__all__ = [
    "MAX_OUTPUT",
    "MINTERPOLATE_OPTIONS",
    "StitchResult",
    "VideoWriter",
    "fit_size",
    "output_frame_count",
    "resize_frames",
    "stitch",
    "to_fps",
]
