"""`flx score`: face-consistency report for images, folders and videos against a character."""

from __future__ import annotations

from pathlib import Path

import typer

from .context import settings_from

_OPTION_FLAGS = {"detect_every": "--detect-every"}  # ScoringOptions field -> flag (the bounds live on the model)


def _output(path: Path | None, suffix: str, flag: str, what: str) -> Path | None:
    """Check an output path before any scoring: right suffix (a `--plot p.txt` would be a PNG named .txt)."""
    if path is None:
        return None
    from engine._core.errors import InputError
    from engine.outputs import check_output_path

    try:
        return check_output_path(path, suffix)
    except InputError:
        raise InputError(f"{flag} writes {what}: use a {suffix} file name instead of '{path.name}'") from None


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
    json_out: Path | None = typer.Option(None, "--json", help="Write the full report as JSON here (.json)."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG of the per-frame score over time (.png)."),
    sheet: Path | None = typer.Option(None, "--sheet", help="Write a PNG contact sheet of the worst frames (.png)."),
    sequence: bool = typer.Option(False, "--sequence", help="The videos are consecutive clips: also check seams."),
    detect_every: int | None = typer.Option(
        None, "--detect-every", help="Run the face detector every k-th frame (default ~6 per second)."
    ),
    min_score: float | None = typer.Option(
        None,
        "--min-score",
        help="Exit non-zero when the overall score is below this (0-100) or a media file is damaged (CI gate).",
    ),
    allow_damaged: bool = typer.Option(
        False, "--allow-damaged", help="With --min-score: judge damaged media on the frames that decoded."
    ),
    force: bool = typer.Option(
        False, "--force", help="With --reference-photo: keep photos that look like a different person."
    ),
) -> None:
    """Face-consistency report for media against a character.

    Each frame's character face (the face closest to the reference, not the largest) is compared to the
    character's embedding; the report gives a score in percent, the detection rate, drift over time and
    identity swaps with their time ranges. Files that decode only in part are marked DAMAGED; files that
    cannot be read are listed and the rest are scored. Examples:

      flx score clip.mp4 --character mira --plot score.png --sheet worst.png

      flx score outputs/stills/ --reference-photo me1.jpg --reference-photo me2.jpg --json report.json
    """
    from engine._core.text import printable
    from engine.api import Engine
    from engine.scoring import ScoringOptions, WorstFrames, gate, summary_lines, write_contact_sheet, write_plot
    from engine.scoring.metrics import check_min_score

    options = ScoringOptions.from_flags(_OPTION_FLAGS, detect_every=detect_every)
    json_out = _output(json_out, ".json", "--json", "the report as JSON")
    plot = _output(plot, ".png", "--plot", "a PNG")
    sheet = _output(sheet, ".png", "--sheet", "a PNG")
    check_min_score(min_score)  # before any model loads
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
        force=force,
    )
    for line in summary_lines(report):
        typer.echo(printable(line))  # file names come from the user's folders: no control characters reach the tty
    if json_out:
        from engine._core.atomic import atomic_write_text

        atomic_write_text(json_out, report.model_dump_json(indent=1))
        typer.echo(f"report: {printable(json_out)}")
    if plot:
        write_plot(report, plot)
        typer.echo(f"plot: {printable(plot)}")
    if sheet:
        write_contact_sheet(report, worst, sheet)
        typer.echo(f"sheet: {printable(sheet)}")
    if min_score is not None:
        error = gate(report, min_score, allow_damaged).error()
        if error is not None:
            raise error
