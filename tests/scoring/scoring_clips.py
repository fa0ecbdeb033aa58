"""Short synthetic clips for the scoring tests (built from the test photos into tmp folders)."""

from __future__ import annotations

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
