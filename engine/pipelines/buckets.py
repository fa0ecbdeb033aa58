"""Render at a size the model was trained on, deliver the size the user asked for.

SDXL was trained on ~1 megapixel "buckets" of several aspect ratios; asked straight for 1920x1080 it renders
duplicated limbs and faces. The engine renders at the bucket nearest in aspect ratio (scaled to the preset's own
native area, so tiny presets get tiny buckets) and resizes to the requested size with Lanczos, cropping the few
pixels of aspect difference from the centre.
"""

from __future__ import annotations

import math

from engine._core.errors import InputError

# SDXL's training buckets (width, height) at 1024 px.
SDXL_BUCKETS: tuple[tuple[int, int], ...] = (
    (1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216),
    (1344, 768), (768, 1344), (1536, 640), (640, 1536),
)  # fmt: skip
MAX_OUTPUT_SIDE = 4096
RESIZE_FILTER = "lanczos"


def _round(v: float, multiple: int) -> int:
    return max(multiple * 2, multiple * round(v / multiple))


def native_size(width: int, height: int, preset_width: int, preset_height: int, multiple: int = 8) -> tuple[int, int]:
    """The bucket to render at for a requested output size (the preset's native area, nearest aspect ratio)."""
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, int) or not 16 <= v <= MAX_OUTPUT_SIDE:
            raise InputError(f"{name} must be a whole number of pixels from 16 to {MAX_OUTPUT_SIDE} (got {v!r})")
    scale = math.sqrt(preset_width * preset_height) / 1024.0
    want = math.log(width / height)
    bw, bh = min(SDXL_BUCKETS, key=lambda b: (abs(math.log(b[0] / b[1]) - want), b))
    return _round(bw * scale, multiple), _round(bh * scale, multiple)


def fit_to(image, width: int, height: int):
    """`image` (PIL) centre-cropped to the target aspect and resized with Lanczos to exactly width x height."""
    from PIL import Image, ImageOps

    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)


__all__ = ["MAX_OUTPUT_SIDE", "RESIZE_FILTER", "SDXL_BUCKETS", "fit_to", "native_size"]
