"""Writing renders: PNG stills and H.264 MP4 clips, each carrying its full generation metadata.

- PNG: a text chunk `parameters` in the A1111 style (read by most image tools and UIs) and a
  text chunk `flx` with the complete metadata as JSON.
- MP4: H.264 yuv420p via PyAV (libx264 ships in its wheel); the metadata JSON goes into the
  container's `comment` tag and into a `.json` sidecar next to the video.

Every file is written to a temp file and renamed into place, so a crash never leaves a
half-written output. Frames are taken as uint8 (or float in [0, 1], converted here explicitly:
diffusers' `export_to_video` multiplies by 255 and silently wraps uint8 input).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine._core.atomic import atomic_path, ensure_writable_dir
from engine._core.errors import InputError, OutputError

PNG_FLX_KEY = "flx"
PNG_PARAMETERS_KEY = "parameters"


def a1111_parameters(metadata: dict[str, Any]) -> str:
    """The A1111 `parameters` text: prompt, `Negative prompt:` line, then `Key: value, ...`."""
    params = metadata.get("parameters", {})
    base = (metadata.get("models") or {}).get("base") or {}
    fields = {
        "Steps": params.get("steps"),
        "Sampler": params.get("scheduler"),
        "CFG scale": params.get("guidance"),
        "Seed": metadata.get("seed"),
        "Size": f"{params.get('width')}x{params.get('height')}" if params.get("width") else None,
        "Model": base.get("id"),
        "Model hash": (base.get("sha256") or "").removeprefix("sha256:")[:10] or None,
        "Preset": metadata.get("preset"),
        "Identity": _identity_text(metadata.get("identity")),
        "Consistency": _consistency_text(metadata.get("consistency")),
        "Version": f"flx-engine {metadata.get('engine_version')}",
    }
    tail = ", ".join(f"{k}: {v}" for k, v in fields.items() if v not in (None, ""))
    lines = [str(metadata.get("prompt", ""))]
    if metadata.get("negative_prompt"):
        lines.append(f"Negative prompt: {metadata['negative_prompt']}")
    lines.append(tail)
    return "\n".join(lines)


def _identity_text(identity: dict | None) -> str | None:
    """`faceid 0.8 (ava v2; bob v1)`: the method, its identity scale x strength, and the characters."""
    if not identity:
        return None
    scale = (identity.get("scales") or {}).get("identity")
    strength = identity.get("strength", 1.0)
    who = "; ".join(f"{c.get('name')} v{c.get('version')}" for c in identity.get("characters") or [])
    eff = f" {scale * strength:g}" if isinstance(scale, (int, float)) else ""
    return f"{identity.get('method')}{eff} ({who})".replace(",", ";")


def _consistency_text(consistency: dict | None) -> str | None:
    if not consistency or consistency.get("score") is None:
        return None
    return f"{consistency['score']:.1f}%"


def check_output_path(path: str | Path, suffix: str) -> Path:
    """The output file `path` if it has `suffix` (".png" stills, ".mp4" clips) and its folder is writable.

    Called by the savers and, before any rendering, by `Engine` so a bad path fails in a second, not after.
    """
    path = Path(path)
    if path.suffix.lower() != suffix:
        kind = {".png": "still outputs are PNG", ".mp4": "clip outputs are MP4"}.get(suffix, f"outputs are {suffix}")
        raise InputError(f"{kind}: use a {suffix} file name instead of '{path.name}'")
    ensure_writable_dir(path.parent)
    return path


def save_png(path: str | Path, image, metadata: dict[str, Any]) -> Path:
    """Write `image` (PIL) as PNG with `parameters` + `flx` text chunks, atomically."""
    from PIL.PngImagePlugin import PngInfo

    path = check_output_path(path, ".png")
    info = PngInfo()
    info.add_text(PNG_PARAMETERS_KEY, a1111_parameters(metadata))
    info.add_itxt(PNG_FLX_KEY, json.dumps(metadata, sort_keys=True, default=str))
    try:
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG", pnginfo=info)
    except OSError as e:
        raise OutputError(f"cannot write '{path}': {e.strerror or e}") from None
    return path


def read_png_metadata(path: str | Path) -> dict[str, Any]:
    """The `flx` metadata of a PNG written by `save_png` (empty dict when absent)."""
    from PIL import Image

    with Image.open(path) as im:
        raw = im.text.get(PNG_FLX_KEY)  # type: ignore[attr-defined]
    return json.loads(raw) if raw else {}


def to_uint8_frames(frames) -> np.ndarray:
    """(F, H, W, 3) uint8 from uint8 arrays, float arrays in [0, 1] or a list of PIL images."""
    if isinstance(frames, np.ndarray):
        arr = frames
    else:
        arr = np.stack([np.asarray(f) for f in frames])
    if arr.ndim == 5 and arr.shape[0] == 1:  # (1, F, H, W, C) pipeline batch of one
        arr = arr[0]
    if arr.ndim != 4 or arr.shape[-1] not in (3, 4):
        raise InputError(f"frames must be shaped (frames, height, width, 3); got {tuple(arr.shape)}")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError("frames contain NaN or infinite values: the render diverged; try another seed or dtype")
        return np.ascontiguousarray((np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8))
    raise InputError(f"frames must be uint8 or float in [0, 1]; got {arr.dtype}")


def save_mp4(
    path: str | Path,
    frames: np.ndarray | Sequence,
    fps: int = 24,
    metadata: dict[str, Any] | None = None,
    crf: int = 18,
) -> Path:
    """Write H.264 yuv420p MP4 (+ `<name>.json` sidecar with `metadata`), atomically.

    A thin wrapper over `engine.video.VideoWriter`, the engine's one MP4 writer, for frames already in memory.

    Args:
        path (`str` or `Path`): destination `.mp4`.
        frames: (F, H, W, 3) uint8, float in [0, 1], or a list of PIL images.
        fps (`int`, defaults to 24): frame rate.
        metadata (`dict`, *optional*): stored as JSON in the `comment` tag and the sidecar.
        crf (`int`, defaults to 18): x264 quality (lower is better).
    """
    from engine.video.writer import VideoWriter, check_fps

    path = check_output_path(path, ".mp4")
    check_fps(fps)
    arr = to_uint8_frames(frames)
    with VideoWriter(path, fps, (arr.shape[2], arr.shape[1]), crf=crf, metadata=metadata) as writer:
        writer.write(arr)
    return path


def sidecar_path(video_path: str | Path) -> Path:
    """`clip.mp4` -> `clip.json`."""
    return Path(video_path).with_suffix(".json")


def read_mp4_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata JSON stored in an MP4's `comment` tag by `save_mp4` (empty dict when absent)."""
    import av

    with av.open(str(path)) as container:
        raw = container.metadata.get("comment")
    return json.loads(raw) if raw else {}


__all__ = [
    "a1111_parameters",
    "check_output_path",
    "read_mp4_metadata",
    "read_png_metadata",
    "save_mp4",
    "save_png",
    "sidecar_path",
    "to_uint8_frames",
]
