"""`flx video NAME` (one clip of a character) and `flx sequence FILE` (chained clips, stitched)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from .context import settings_from

console = Console(highlight=False)

VIDEO_FLAGS = {"seconds": "--seconds", "motion": "--motion", "seed": "--seed", "width": "--width", "height": "--height",
               "steps": "--steps", "guidance": "--guidance", "reference_strength": "--strength", "fps": "--fps",
               "character_lora": "--character-lora"}  # fmt: skip


def _motion(value: str | None):
    if value is None or value in ("low", "medium", "high"):
        return value
    try:
        return float(value)
    except ValueError:
        from engine._core.errors import InputError

        raise InputError(f"--motion {value!r}: use low, medium, high or a number from 0 to 1") from None


def video(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="Character name/id or .flx (the identity of the clip)."),
    prompt: str = typer.Option(..., "--prompt", help="What happens (identity and motion clauses are added)."),
    preset: str = typer.Option("video-wan21-t2v-14b-standin", "--preset", help="Video preset (see `flx doctor`)."),
    start_image: Path | None = typer.Option(None, "--start-image", help="Start frame (image-to-video presets)."),
    end_image: Path | None = typer.Option(None, "--end-image", help="End frame (FLF2V, Wan 2.2 I2V A14B)."),
    seconds: float | None = typer.Option(None, "--seconds", help="Clip length (default: the preset's)."),
    motion: str | None = typer.Option(None, "--motion", help="low, medium, high, or 0..1."),
    out: Path = typer.Option(Path("outputs/video.mp4"), "--out", help="MP4 to write (24 fps)."),
    seed: int = typer.Option(0, "--seed"),
    steps: int | None = typer.Option(None, "--steps"),
    width: int | None = typer.Option(None, "--width", help="Output width (rendered natively, then resized)."),
    height: int | None = typer.Option(None, "--height"),
    strength: float | None = typer.Option(None, "--strength", help="Reference attention strength 0..1."),
    experimental: bool = typer.Option(False, "--experimental", help="Untrained reference attention (I2V, TI2V)."),
    character_lora: float | None = typer.Option(
        None, "--character-lora", help="Weight 0..2 of the character's own LoRA (`flx train` on the preset's base)."
    ),
    interpolation: str = typer.Option("minterpolate", "--interpolation", help="minterpolate or repeat."),
) -> None:
    """Render one clip of a character: H.264 MP4 at 24 fps, metadata + sidecar, consistency report."""
    from engine._core.text import printable
    from engine.api import Engine

    eng = Engine(settings_from(ctx))
    with console.status(f"rendering with {escape(preset)}..."):
        outcome = eng.video(
            preset, prompt, out=out, flags=VIDEO_FLAGS, character=name, start_image=str(start_image) if start_image else None,
            end_image=str(end_image) if end_image else None, seconds=seconds, motion=_motion(motion), seed=seed,
            steps=steps, width=width, height=height, reference_strength=strength, experimental=experimental,
            interpolation=interpolation, character_lora=character_lora,
        )  # fmt: skip
    score = (outcome.metadata.get("consistency") or {}).get("score")
    tail = "" if score is None else f", consistency {score:.1f}%"
    console.print(f"[green]wrote[/] {escape(printable(outcome.path))} ({outcome.frames.shape[0]} frames{tail})")


def sequence(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="Sequence file (YAML/JSON): preset, character, shots."),
    out: Path = typer.Option(Path("outputs/sequence.mp4"), "--out", help="The stitched MP4."),
) -> None:
    """Render a sequence: chained segments (continuations), a drift guard (retry, re-anchor), stitched at 24 fps.
    Finished segments are reused when the command runs again."""
    from engine._core.text import printable
    from engine.api import Engine

    with console.status("rendering the sequence..."):
        result = Engine(settings_from(ctx)).sequence(file, out=out)
    for r in result.segments:
        s = "-" if r.get("score") is None else f"{r['score']:.1f}%"
        how = "reused" if r.get("reused") else f"{len(r.get('attempts', []))} attempt(s)"
        flag = " DRIFTED" if r.get("drifted") else (" re-anchored" if r.get("reanchored") else "")
        console.print(f"  segment {r['index']}: {r['seconds']:.2f} s, score {s}, {how}{flag}")
    console.print(f"[green]wrote[/] {escape(printable(result.path))}; report {escape(printable(result.report_path))}")
