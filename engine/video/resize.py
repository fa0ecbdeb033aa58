"""High-quality frame resizing: render at the model's native size, then resize the frames for delivery.

Wan renders 832x480 or 1280x720; asking it for 1920x1080 costs memory and leaves its trained range, so the engine
renders natively and resizes the frames with Lanczos (OpenCV's 8x8-tap `INTER_LANCZOS4`), the sharpest of the
standard filters (its slight overshoot at edges is clipped to 0..255). `fit_size` picks the delivery size.
"""

from __future__ import annotations

import numpy as np

from engine._core.errors import InputError

MAX_OUTPUT = (1920, 1080)  # the largest delivery size the engine writes


def fit_size(
    width: int, height: int, max_size: tuple[int, int] = MAX_OUTPUT, *, upscale: bool = True
) -> tuple[int, int]:
    """The largest even (width, height) with the aspect ratio of `width`x`height` that fits in `max_size`.

    832x480 -> 1872x1080 and 1280x720 -> 1920x1080 for the default 1920x1080; with `upscale=False` a frame
    already inside `max_size` keeps its size (made even)."""
    if width < 1 or height < 1:
        raise InputError(f"frame size {width}x{height} has no pixels: check the render size")
    mw, mh = (int(v) for v in max_size)
    if mw < 2 or mh < 2:
        raise InputError(f"max size {mw}x{mh} is too small: give at least 2x2 pixels")
    scale = min(mw / width, mh / height)
    if not upscale:
        scale = min(scale, 1.0)
    w = min(mw - mw % 2, max(2, 2 * round(width * scale / 2)))
    h = min(mh - mh % 2, max(2, 2 * round(height * scale / 2)))
    return w, h


def resize_frames(frames, size: tuple[int, int]) -> np.ndarray:
    """(F, H, W, 3) uint8 frames resized to `size` (width, height) with Lanczos; frames already that size are
    returned as they are."""
    import cv2

    from .writer import MAX_SIDE, as_batch

    arr = as_batch(frames)
    w, h = (int(v) for v in size)
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
        raise InputError(f"resize target {w}x{h} is outside 1..{MAX_SIDE} pixels a side: choose a smaller size")
    if arr.shape[1:3] == (h, w):
        return arr
    out = np.empty((arr.shape[0], h, w, 3), np.uint8)
    for i, frame in enumerate(arr):
        out[i] = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LANCZOS4)
    return out


__all__ = ["MAX_OUTPUT", "fit_size", "resize_frames"]
