"""`flx score` (filled in by the scoring work)."""

import typer


def score(media: list[str] = typer.Argument(..., help="Images, folders or videos.")) -> None:
    """Face-consistency report for media against a character."""
    raise typer.Exit(2)
