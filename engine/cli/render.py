"""`flx still` and `flx clip`: render through a preset's real pipeline."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

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


class MethodChoice(str, Enum):
    plain = "plain"
    faceid = "faceid"
    instantid = "instantid"
    lora = "lora"


# `lora`: the plain SDXL preset with the character's own LoRA (`flx train`) at --character-lora (default 1).
METHOD_PRESETS = {
    "plain": "stills-sdxl",
    "faceid": "stills-faceid-sdxl",
    "instantid": "stills-instantid-sdxl",
    "lora": "stills-sdxl",
}
STILL_FLAGS = {
    "characters": "--character", "candidates": "--candidates", "identity_strength": "--identity-strength",
    "identity_scale": "--identity-scale", "structure_scale": "--structure-scale", "lora_scale": "--lora-scale",
    "controlnet_scale": "--controlnet-scale", "identity_start": "--identity-window", "identity_end": "--identity-window",
    "layout": "--layout", "width": "--width", "height": "--height", "steps": "--steps", "guidance": "--guidance",
    "seed": "--seed", "yaw": "--yaw", "prompt": "--prompt", "negative_prompt": "--negative", "scheduler": "--scheduler",
    "character_lora": "--character-lora",
}  # fmt: skip


def _window(spec: str | None) -> tuple[float | None, float | None]:
    if spec is None:
        return None, None
    from engine._core.errors import InputError

    try:
        a, b = (float(v) for v in spec.split(":"))
    except ValueError:
        raise InputError(f"--identity-window {spec!r}: use START:END fractions of the steps, e.g. 0.0:0.8") from None
    return a, b


def _describe_score(score) -> str:
    from engine._core.text import printable

    if score is None:
        return "not scored"
    parts = []
    for r in score.regions:
        who = "" if r.identified_as in (None, r.name) else f", looks like {r.identified_as}"
        parts.append(
            f"{r.name}: " + ("no face" if r.score is None or r.faces_in_region == 0 else f"{r.score:.1f}%{who}")
        )
    swap = " SWAPPED" if score.swapped else ""
    return printable(f"consistency {score.score:.1f}% ({'; '.join(parts)}){swap}")


def still(
    ctx: typer.Context,
    prompt: str = typer.Option(..., "--prompt", help="The scene (the characters' identity clauses are added)."),
    character: list[str] | None = typer.Option(
        None, "--character", "-c", help="Character name/id or .flx (repeat for up to 4, left to right)."
    ),
    method: MethodChoice | None = typer.Option(
        None,
        "--method",
        help="plain, faceid, instantid or lora (the character's own LoRA on plain SDXL): picks the standard preset "
        "(default faceid with a character).",
    ),
    preset: str | None = typer.Option(None, "--preset", help="Preset name or YAML path (overrides --method)."),
    out: Path = typer.Option(Path("outputs/still.png"), "--out", help="PNG to write (candidates: NAME-1.png, ...)."),
    seed: int = typer.Option(0, "--seed", help="Same seed + same settings = same image; candidate k uses seed+k."),
    candidates: int = typer.Option(1, "--candidates", "-n", help="Images to render; each is scored."),
    negative: str | None = typer.Option(None, "--negative", help="Negative prompt (default: the preset's)."),
    width: int | None = typer.Option(None, "--width", help="Output width (rendered at the nearest SDXL bucket)."),
    height: int | None = typer.Option(None, "--height", help="Output height."),
    steps: int | None = typer.Option(None, "--steps", help="Override the preset's steps."),
    guidance: float | None = typer.Option(None, "--guidance", help="Override the preset's guidance scale."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="euler, euler_a, dpmpp_2m, dpmpp_2m_karras, ..."),
    identity_strength: float = typer.Option(1.0, "--identity-strength", help="0..2; 0 renders the plain model."),
    identity_scale: float | None = typer.Option(None, "--identity-scale", help="IP-Adapter identity scale."),
    structure_scale: float | None = typer.Option(None, "--structure-scale", help="FaceID-Plus CLIP structure."),
    lora_scale: float | None = typer.Option(None, "--lora-scale", help="FaceID companion LoRA weight."),
    controlnet_scale: float | None = typer.Option(None, "--controlnet-scale", help="InstantID IdentityNet scale."),
    character_lora: float | None = typer.Option(
        None, "--character-lora", help="Weight 0..2 of the character's own LoRA (`flx train`); --method lora: 1."
    ),
    identity_window: str | None = typer.Option(None, "--identity-window", help="START:END fractions of the steps."),
    yaw: float | None = typer.Option(None, "--yaw", help="InstantID: keypoints from a pose template at this yaw."),
    layout: str | None = typer.Option(None, "--layout", help="auto, or x0,y0,x1,y1;... fractions per character."),
    no_compose: bool = typer.Option(False, "--no-compose", help="Send the prompt as written (no identity clauses)."),
    no_score: bool = typer.Option(False, "--no-score", help="Do not score the candidates."),
    offload: OffloadChoice | None = typer.Option(None, "--offload", help="GPU memory plan (default: auto)."),
) -> None:
    """Render a still, with up to 4 characters from the library, and print each candidate's consistency score."""
    from engine._core.text import printable
    from engine.identity.layout import parse_boxes
    from engine.shots.still import shot_from_flags

    characters = list(character or [])
    name = preset or METHOD_PRESETS[(method.value if method else ("faceid" if characters else "plain"))]
    if method is MethodChoice.lora and character_lora is None:
        character_lora = 1.0
    start, end = _window(identity_window)
    boxes = None if layout in (None, "auto") else parse_boxes(layout)
    shot = shot_from_flags(
        STILL_FLAGS,
        preset=name, prompt=prompt, characters=characters, seed=seed, candidates=candidates, negative_prompt=negative,
        width=width, height=height, steps=steps, guidance=guidance, scheduler=scheduler,
        identity_strength=identity_strength, identity_scale=identity_scale, structure_scale=structure_scale,
        lora_scale=lora_scale, controlnet_scale=controlnet_scale, identity_start=start, identity_end=end, yaw=yaw,
        character_lora=character_lora, layout=boxes, compose=not no_compose, score=not no_score,
    )  # fmt: skip
    from engine.shots.still import render_still_shot

    with console.status(f"rendering with {name}..."):
        outcome = render_still_shot(_engine(ctx, offload), shot, out)
    for c in outcome.candidates:
        tail = f"  {_describe_score(c.score)}" if characters and not no_score else ""
        console.print(f"[green]wrote[/] {escape(printable(c.path))} (seed {c.seed}){escape(tail)}")
    if len(outcome.candidates) > 1 and characters and not no_score:
        console.print(f"best: {escape(printable(outcome.best.path))}")


def clip(
    ctx: typer.Context,
    prompt: str = typer.Option(..., "--prompt", help="What happens in the clip."),
    preset: str = typer.Option("video-wan21-i2v-480p", "--preset", help="Preset name or YAML path."),
    image: Path | None = typer.Option(None, "--image", help="Start frame (image-to-video)."),
    end_image: Path | None = typer.Option(None, "--end-image", help="End frame (FLF2V, Wan 2.2 I2V A14B)."),
    out: Path = typer.Option(Path("outputs/clip.mp4"), "--out", help="MP4 to write."),
    seed: int = typer.Option(0, "--seed"),
    frames: int | None = typer.Option(None, "--frames", help="Number of frames (4k+1)."),
    steps: int | None = typer.Option(None, "--steps", help="Override the preset's steps."),
    offload: OffloadChoice | None = typer.Option(None, "--offload", help="GPU memory plan (default: auto)."),
) -> None:
    """Render one clip (MP4, H.264, 24 fps)."""
    kw = {k: v for k, v in {"num_frames": frames, "steps": steps}.items() if v is not None}
    with console.status(f"rendering with {preset}..."):
        path = _engine(ctx, offload).clip(preset, prompt, out=out, image=image, end_image=end_image, seed=seed, **kw)
    console.print(f"[green]wrote[/] {path}")
