"""`flx score`: face-consistency report for images, folders and videos against a character."""

from __future__ import annotations

from pathlib import Path

import typer

from .context import settings_from
from .errors import err_console


def score(
    ctx: typer.Context,
    media: list[Path] = typer.Argument(..., help="Images, folders of images, or videos (MP4/MOV/WebM/GIF)."),
    character: str | None = typer.Option(
        None, "--character", "-c", help="Character name or id in the library, or a .flx file."
    ),
    reference_photo: list[Path] | None = typer.Option(
        None, "--reference-photo", "-r", help="Score against photos instead of a character (repeatable)."
    ),
    protocol: str = typer.Option("full", "--protocol", "-p", help="full (every frame, tracked) or opens2v."),
    encoder: str | None = typer.Option(None, "--encoder", help="Identity encoder id (default: dlib-resnet-v1)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the full report as JSON here."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG of the per-frame score over time."),
    sheet: Path | None = typer.Option(None, "--sheet", help="Write a PNG contact sheet of the worst frames."),
    sequence: bool = typer.Option(False, "--sequence", help="The videos are consecutive clips: also check seams."),
    detect_every: int | None = typer.Option(
        None, "--detect-every", min=1, help="Run the face detector every k-th frame (default ~6 per second)."
    ),
    min_score: float | None = typer.Option(
        None, "--min-score", min=0, max=100, help="Exit with code 1 when the overall score is below this (CI gate)."
    ),
) -> None:
    """Face-consistency report for media against a character.

    Each frame's character face (the face closest to the reference, not the largest) is compared to the
    character's embedding; the report gives a score in percent, the detection rate, drift over time and
    identity swaps with their time ranges. Examples:

      flx score clip.mp4 --character mira --plot score.png --sheet worst.png

      flx score outputs/stills/ --reference-photo me1.jpg --reference-photo me2.jpg --json report.json
    """
    from engine.api import Engine
    from engine.scoring import ScoringOptions, WorstFrames, summary_lines, write_contact_sheet, write_plot

    options = ScoringOptions(detect_every=detect_every)
    worst = WorstFrames() if sheet else None
    report = Engine(settings_from(ctx)).score(
        media,
        character=character,
        reference_photos=reference_photo,
        protocol=protocol,
        encoder_id=encoder,
        options=options,
        sequence=sequence,
        collector=worst,
    )
    for line in summary_lines(report):
        typer.echo(line)
    if json_out:
        from engine._core.atomic import atomic_write_text

        atomic_write_text(json_out, report.model_dump_json(indent=1))
        typer.echo(f"report: {json_out}")
    if plot:
        write_plot(report, plot)
        typer.echo(f"plot: {plot}")
    if sheet:
        write_contact_sheet(report, worst, sheet)
        typer.echo(f"sheet: {sheet}")
    if min_score is not None and (report.overall.score is None or report.overall.score < min_score):
        err_console.print(f"[bold red]score below --min-score {min_score:g}[/]")
        raise typer.Exit(1)
