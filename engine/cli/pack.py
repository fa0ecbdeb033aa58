"""`flx pack NAME`: the character pack (canonical anchor stills, scored), stored with the character."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from .context import settings_from

console = Console(highlight=False)


def pack(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Character name or id in the library."),
    candidates: int = typer.Option(4, "--candidates", "-n", help="Candidates per shot (the best is kept)."),
    preset: str | None = typer.Option(
        None, "--preset", help="Identity preset (default stills-instantid-sdxl: its keypoints follow each pose)."
    ),
    out: Path = typer.Option(Path("outputs/pack"), "--out", help="Folder for the candidates and the contact sheet."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first shot's first candidate."),
    shot: list[str] | None = typer.Option(None, "--shot", help="Only these shots (ids from configs/pack.yaml)."),
) -> None:
    """Render the character's pack: front neutral, front smile, 3/4 left/right, profile, selfie, seated,
    standing; N scored candidates each, the best kept (new character version) and a contact sheet written."""
    from engine._core.text import printable
    from engine.api import Engine

    with console.status(f"rendering the pack of {escape(printable(name))}..."):
        result = Engine(settings_from(ctx)).pack(
            name, out_dir=out, candidates=candidates, preset=preset, seed=seed, shots=shot or None
        )
    for img in result.character.pack:
        score = "no face" if img.score is None or img.yaw is None else f"{img.score:.1f}%"
        yaw = "" if img.yaw is None else f", yaw {img.yaw:+.0f}"
        off = " (off-pose)" if not img.on_pose else ""
        console.print(f"  {escape(img.label):20} {score}{yaw}{off}  seed {img.seed}")
    console.print(
        f"[green]stored[/] pack in '{escape(printable(result.character.name))}' v{result.character.version}; "
        f"contact sheet {escape(printable(result.sheet))}"
    )
