"""`flx still` and `flx clip`: render through a preset's real pipeline."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from .context import settings_from

console = Console(highlight=False)


class OffloadChoice(str, Enum):
    none = "none"
    model = "model"
    sequential = "sequential"


def _engine(ctx: typer.Context, offload: OffloadChoice | None):
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    from engine.api import Engine

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()

    overrides = {"offload": offload.value} if offload else {}
    return Engine(settings_from(ctx), runtime_overrides=overrides)


def still(
    ctx: typer.Context,
    prompt: str = typer.Option(..., "--prompt", help="What to draw."),
    preset: str = typer.Option("stills-sdxl", "--preset", help="Preset name or YAML path."),
    out: Path = typer.Option(Path("outputs/still.png"), "--out", help="PNG to write."),
    seed: int = typer.Option(0, "--seed", help="Same seed + same settings = same image."),
    negative: str | None = typer.Option(None, "--negative", help="Negative prompt (default: the preset's)."),
    steps: int | None = typer.Option(None, "--steps", help="Override the preset's steps."),
    offload: OffloadChoice | None = typer.Option(None, "--offload", help="GPU memory plan (default: auto)."),
) -> None:
    """Render one still image."""
    kw = {"steps": steps} if steps is not None else {}
    with console.status(f"rendering with {preset}..."):
        path = _engine(ctx, offload).still(preset, prompt, out=out, seed=seed, negative_prompt=negative, **kw)
    console.print(f"[green]wrote[/] {path}")


def clip(
    ctx: typer.Context,
    prompt: str = typer.Option(..., "--prompt", help="What happens in the clip."),
    preset: str = typer.Option("video-wan21-i2v-480p", "--preset", help="Preset name or YAML path."),
    image: Path | None = typer.Option(None, "--image", help="Start frame (image-to-video)."),
    out: Path = typer.Option(Path("outputs/clip.mp4"), "--out", help="MP4 to write."),
    seed: int = typer.Option(0, "--seed"),
    frames: int | None = typer.Option(None, "--frames", help="Number of frames (4k+1)."),
    steps: int | None = typer.Option(None, "--steps", help="Override the preset's steps."),
    offload: OffloadChoice | None = typer.Option(None, "--offload", help="GPU memory plan (default: auto)."),
) -> None:
    """Render one clip (MP4, H.264, 24 fps)."""
    kw = {k: v for k, v in {"num_frames": frames, "steps": steps}.items() if v is not None}
    with console.status(f"rendering with {preset}..."):
        path = _engine(ctx, offload).clip(preset, prompt, out=out, image=image, seed=seed, **kw)
    console.print(f"[green]wrote[/] {path}")
