"""Synthetic test clips with a known truth: moving/zooming crops of real photos on a canvas.

Used by `make demo`, the tests and `benchmarks/score_video.py`: a clip of person A (obama.jpg /
obama2.jpg) with a stretch of person B (biden.jpg) spliced in, so the scorer's swap finder can be
checked against the frames where B really is.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine._core.errors import FaceNotFound


@dataclass(frozen=True)
class TruthSegment:
    """Frames [start_frame, end_frame] (inclusive) that show the spliced-in other person."""

    start_frame: int
    end_frame: int
    fps: float
    who: str

    @property
    def start_s(self) -> float:
        return self.start_frame / self.fps

    @property
    def end_s(self) -> float:
        return (self.end_frame + 1) / self.fps


@dataclass(frozen=True)
class _Sprite:
    """A head-and-shoulders crop of a photo and where its face sits inside the crop."""

    pixels: np.ndarray  # RGB uint8
    face_box: tuple[float, float, float, float]


def head_crop(image: np.ndarray, face_box: Sequence[float], margin: float = 0.9) -> _Sprite:
    """Crop `image` around `face_box` with `margin` x face size on each side (clamped to the image)."""
    x0, y0, x1, y1 = face_box
    fw, fh = x1 - x0, y1 - y0
    h, w = image.shape[:2]
    cx0, cy0 = int(max(0, x0 - margin * fw)), int(max(0, y0 - margin * fh))
    cx1, cy1 = int(min(w, x1 + margin * fw)), int(min(h, y1 + margin * fh * 1.3))
    crop = np.ascontiguousarray(image[cy0:cy1, cx0:cx1])
    return _Sprite(crop, (x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0))


def _largest_face_box(analyzer, image: np.ndarray, name: str) -> tuple[float, float, float, float]:
    faces = analyzer.detect(image, upsample=0) or analyzer.detect(image, upsample=1)
    if not faces:
        raise FaceNotFound(f"no face found in {name}: the demo clip needs the test photos in testdata/faces")
    return max(faces, key=lambda f: f.area).box


def _background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A soft two-colour gradient with mild texture (not flat, so the encoder and detector see real content)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (xx / max(width - 1, 1) * 0.6 + yy / max(height - 1, 1) * 0.4)[..., None]
    a, b = np.array([40, 60, 90], np.float32), np.array([150, 130, 110], np.float32)
    bg = a * (1 - t) + b * t + rng.normal(0, 4, (height, width, 1)).astype(np.float32)
    return np.clip(bg, 0, 255).astype(np.uint8)


def _paste(canvas: np.ndarray, sprite: np.ndarray, x: int, y: int) -> None:
    h, w = canvas.shape[:2]
    sh, sw = sprite.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + sw, w), min(y + sh, h)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = sprite[y0 - y : y1 - y, x0 - x : x1 - x]


def render_frames(
    schedule: Sequence[tuple[_Sprite, int]],
    size: tuple[int, int],
    *,
    face_frac: float = 0.3,
    fps: float = 24.0,
    background: np.ndarray | None = None,
    motion: bool = True,
    center: tuple[float, float] = (0.5, 0.5),
) -> Iterator[np.ndarray]:
    """Frames showing each sprite for its number of frames, moving and zooming gently.

    The face is scaled to `face_frac` of the frame height and drifts over the frame on slow sines,
    so consecutive frames differ (tracking has something to do) but the face stays whole.
    """
    import cv2

    width, height = size
    bg = _background(width, height) if background is None else background
    n = 0
    for sprite, count in schedule:
        fx0, fy0, fx1, fy1 = sprite.face_box
        base = face_frac * height / max(fy1 - fy0, 1.0)
        for _ in range(count):
            t = n / fps
            zoom = 1.0 + (0.12 * math.sin(2 * math.pi * t / 5.0) if motion else 0.0)
            s = base * zoom
            img = cv2.resize(
                sprite.pixels, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
            )
            cx = width * (center[0] + (0.18 * math.sin(2 * math.pi * t / 8.0) if motion else 0.0))
            cy = height * (center[1] + (0.06 * math.sin(2 * math.pi * t / 6.0) if motion else 0.0))
            fcx, fcy = (fx0 + fx1) / 2 * s, (fy0 + fy1) / 2 * s
            frame = bg.copy()
            _paste(frame, img, int(round(cx - fcx)), int(round(cy - fcy)))
            yield frame
            n += 1


def write_video(
    frames, out_path: str | os.PathLike, fps: float = 24.0, *, crf: int = 20, preset: str = "veryfast"
) -> Path:
    """Write RGB frames (any iterable, streamed) as H.264 yuv420p MP4 through the engine's one writer (atomically)."""
    from engine.video.writer import VideoWriter

    with VideoWriter(out_path, fps, None, crf=crf, preset=preset) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.path


def load_sprites(faces_dir: str | os.PathLike, analyzer=None) -> dict[str, _Sprite]:
    """Head crops of obama.jpg, obama2.jpg (person A) and biden.jpg (person B) from the test photos."""
    from engine.identity.images import load_image

    if analyzer is None:
        from .reference import analyzer_for

        analyzer = analyzer_for()
    faces_dir = Path(faces_dir)
    sprites = {}
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg"):
        img = load_image(faces_dir / name)
        sprites[name] = head_crop(img, _largest_face_box(analyzer, img, name))
    return sprites


def build_demo_clip(
    faces_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    seconds: float = 4.0,
    size: tuple[int, int] = (640, 360),
    *,
    fps: float = 24.0,
    splice: tuple[float, float] = (0.45, 0.7),
    analyzer=None,
    preset: str = "veryfast",
) -> tuple[Path, TruthSegment]:
    """Build an H.264 clip of person A with person B spliced in, and return (path, truth).

    Layout (fractions of `seconds`): A from obama.jpg until 0.25, A from obama2.jpg until
    `splice[0]`, B (biden.jpg) until `splice[1]`, then A from obama.jpg to the end.

    Args:
        faces_dir: folder with the test photos (obama.jpg, obama2.jpg, biden.jpg).
        out_path: where the MP4 goes (written atomically).
        seconds (`float`, *optional*, defaults to 4.0): clip length.
        size (`tuple[int, int]`, *optional*, defaults to (640, 360)): width, height (even numbers).
        splice (`tuple[float, float]`, *optional*): start and end of the B stretch, as fractions of the clip.

    Examples:
        ```py
        >>> path, truth = build_demo_clip("testdata/faces", "demo.mp4")
        >>> truth.start_s, truth.end_s
        (1.8, 2.8)
        ```
    """
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"size {size} must be even in both sides for yuv420p H.264")
    sprites = load_sprites(faces_dir, analyzer)
    total = int(round(seconds * fps))
    a1 = int(round(0.25 * total))
    s0, s1 = int(round(splice[0] * total)), int(round(splice[1] * total))
    schedule = [
        (sprites["obama.jpg"], a1),
        (sprites["obama2.jpg"], s0 - a1),
        (sprites["biden.jpg"], s1 - s0),
        (sprites["obama.jpg"], total - s1),
    ]
    path = write_video(render_frames(schedule, size, fps=fps), out_path, fps, preset=preset)
    return path, TruthSegment(s0, s1 - 1, fps, "biden.jpg")


def run_score_demo(
    faces_dir: str | os.PathLike, out_dir: str | os.PathLike, *, reference=None, analyzer=None, echo=print
):
    """Build the demo clip, score it, print the summary and write report.json, score.png and worst.png.

    `reference` defaults to obama.jpg + obama2.jpg from `faces_dir`. Returns (report, truth, paths).
    Takes a few seconds (96 frames at 640x360).
    """
    from engine._core.atomic import atomic_write_text, ensure_writable_dir

    from .consistency import WorstFrames
    from .reference import analyzer_for, reference_from_photos
    from .render import summary_lines, write_contact_sheet, write_plot
    from .scorer import score_media

    analyzer = analyzer or analyzer_for()
    faces_dir, out_dir = Path(faces_dir), ensure_writable_dir(out_dir)
    if reference is None:
        reference = reference_from_photos([faces_dir / "obama.jpg", faces_dir / "obama2.jpg"], analyzer)
    clip, truth = build_demo_clip(faces_dir, out_dir / "score_demo.mp4", analyzer=analyzer)
    worst = WorstFrames()
    report = score_media([clip], reference, analyzer, "full", collector=worst, reference_source="demo")
    for line in summary_lines(report):
        echo(line)
    echo(
        f"  truth: other person at {truth.start_s:.2f}-{truth.end_s:.2f}s (frames {truth.start_frame}-{truth.end_frame})"
    )
    paths = {
        "clip": clip,
        "report": atomic_write_text(out_dir / "score_report.json", report.model_dump_json(indent=1)),
        "plot": write_plot(report, out_dir / "score_plot.png"),
        "sheet": write_contact_sheet(report, worst, out_dir / "score_sheet.png"),
    }
    return report, truth, paths
