"""`flx demo`: the end-to-end demo on the embedded default (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from .context import settings_from


def demo(
    ctx: typer.Context,
    out: Path = typer.Option(Path("outputs/demo"), "--out", help="Where the demo writes its files."),
    faces_dir: Path = typer.Option(Path("../shared/testdata/faces"), "--faces-dir", help="Test photos folder."),
) -> None:
    """Doctor, then a tiny still and clip through the real pipelines, a character, and a score."""
    from engine.demo import run_demo

    run_demo(settings_from(ctx), out, faces_dir)
