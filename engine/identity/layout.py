"""Where each character goes in a shot: one region per character (up to 4), and a face box inside it.

Identity adapters by themselves condition on one face; several characters need each identity routed to its own
region (IP-Adapter masks), each face drawn at its place on InstantID's keypoint map, and each rendered face scored
against its own character. `auto` puts the characters side by side (equal columns, left to right in the order
given); explicit boxes are fractions of the image (`x0,y0,x1,y1`, 0..1), one per character.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine._core.errors import InputError

MAX_CHARACTERS = 4
# Inside a region: the face box is this share of the region's width (capped by its height), centred horizontally,
# with its centre at this height: a head-and-shoulders framing for one character, a group shot for four.
FACE_WIDTH_SHARE = 0.42
FACE_CENTRE_Y = 0.36


@dataclass(frozen=True)
class Region:
    """One character's part of the image, in pixels of the output: `box` (the region) and `face` (face box)."""

    index: int
    box: tuple[int, int, int, int]
    face: tuple[float, float, float, float]

    def contains(self, x: float, y: float) -> bool:
        x0, y0, x1, y1 = self.box
        return x0 <= x < x1 and y0 <= y < y1

    def label(self, n: int) -> str:
        """Where the region is, in words (matches the prompt composer's default region order)."""
        return "whole image" if n == 1 else _LABELS[n][self.index]


_LABELS = {
    2: ("left", "right"),
    3: ("left", "centre", "right"),
    4: ("far left", "centre left", "centre right", "far right"),
}


def check_count(n: int) -> int:
    if not 1 <= n <= MAX_CHARACTERS:
        raise InputError(
            f"{n} characters in one image: use 1 to {MAX_CHARACTERS} (one identity region each); "
            "render a group in two passes, or pick the main characters"
        )
    return n


def _face_box(box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    side = min(w * FACE_WIDTH_SHARE, h * 0.6)
    cx, cy = x0 + w / 2, y0 + h * FACE_CENTRE_Y
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def auto_layout(n: int, width: int, height: int) -> list[Region]:
    """`n` equal columns, left to right."""
    check_count(n)
    edges = np.linspace(0, width, n + 1).round().astype(int)
    regions = []
    for i in range(n):
        box = (int(edges[i]), 0, int(edges[i + 1]), int(height))
        regions.append(Region(i, box, _face_box(box)))
    return regions


def parse_boxes(spec: str) -> list[tuple[float, float, float, float]]:
    """`"0,0,0.5,1;0.5,0,1,1"` -> fractional boxes (one per character, `;`-separated)."""
    boxes = []
    for part in spec.split(";"):
        try:
            vals = [float(v) for v in part.split(",")]
        except ValueError:
            vals = []
        if len(vals) != 4:
            raise InputError(f"layout box {part!r} is not x0,y0,x1,y1: use fractions, e.g. 0,0,0.5,1;0.5,0,1,1")
        boxes.append(tuple(vals))
    return boxes


def layout(n: int, width: int, height: int, boxes: Sequence[Sequence[float]] | None = None) -> list[Region]:
    """Regions for `n` characters: `auto` (boxes None) or one fractional box per character."""
    check_count(n)
    if boxes is None:
        return auto_layout(n, width, height)
    if len(boxes) != n:
        raise InputError(f"{len(boxes)} layout boxes for {n} characters: give one box per character")
    regions = []
    for i, b in enumerate(boxes):
        x0, y0, x1, y1 = (float(v) for v in b)
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise InputError(f"layout box {i + 1} ({x0:g},{y0:g},{x1:g},{y1:g}) must satisfy 0 <= x0 < x1 <= 1 and y")
        box = (round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height))
        if box[2] - box[0] < 8 or box[3] - box[1] < 8:
            raise InputError(f"layout box {i + 1} is smaller than 8x8 pixels at {width}x{height}: make it larger")
        regions.append(Region(i, box, _face_box(box)))
    return regions


def region_masks(regions: Sequence[Region], width: int, height: int) -> np.ndarray:
    """(n, height, width) float32 masks, 1 inside each region."""
    masks = np.zeros((len(regions), height, width), dtype=np.float32)
    for r in regions:
        x0, y0, x1, y1 = r.box
        masks[r.index, y0:y1, x0:x1] = 1.0
    return masks


__all__ = ["MAX_CHARACTERS", "Region", "auto_layout", "check_count", "layout", "parse_boxes", "region_masks"]
