"""The recommended reference crop: square, head and shoulders, head filling ~70% of the frame height.

Creators' guides for character references (and the IP-Adapter/InstantID model cards) recommend a
1024x1024 head-and-shoulders crop: the head large enough for identity, the shoulders visible for scale.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .types import Face

# A detector box covers brows to chin; the whole head (hair to chin) is ~1.7x its height.
HEAD_PER_BOX = 1.7
HEAD_SHARE = 0.70  # head height / crop side


def head_box(face: Face) -> tuple[float, float, float, float]:
    """Estimated whole-head box (x0, y0, x1, y1): the detector box grown upwards for the hair."""
    x0, y0, x1, y1 = face.box
    h = (y1 - y0) * HEAD_PER_BOX
    cx = (x0 + x1) / 2
    return cx - h * 0.42, y1 - h, cx + h * 0.42, y1


def head_and_shoulders_square(face: Face) -> tuple[float, float, float]:
    """(centre x, centre y, side) of the recommended crop in image coordinates."""
    hx0, hy0, hx1, hy1 = head_box(face)
    side = (hy1 - hy0) / HEAD_SHARE
    # head at the top with a small margin, shoulders below
    top = hy0 - side * 0.06
    return (hx0 + hx1) / 2, top + side / 2, side


def head_and_shoulders_crop(image: np.ndarray, face: Face, size: int = 1024) -> np.ndarray:
    """Square head-and-shoulders crop resized to `size`; areas outside the photo are edge-padded."""
    cx, cy, side = head_and_shoulders_square(face)
    h, w = image.shape[:2]
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    s = max(round(side), 1)
    pad = max(0, -x0, -y0, x0 + s - w, y0 + s - h)
    src = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else image
    crop = src[y0 + pad : y0 + pad + s, x0 + pad : x0 + pad + s]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.LANCZOS))
