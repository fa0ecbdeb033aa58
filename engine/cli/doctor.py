"""`flx doctor`: a table of what this machine can run."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from engine._core.errors import EngineError

from .context import settings_from

console = Console(highlight=False)
STYLE = {"ok": "green", "info": "cyan", "warn": "yellow", "fail": "bold red"}


class PresetNotRunnable(EngineError):
    exit_code = 3


def doctor(
    ctx: typer.Context,
    preset: list[str] | None = typer.Option(None, "--preset", "-p", help="Exit non-zero if this preset cannot run."),
) -> None:
    """Check Python, torch, CUDA/VRAM, xformers, onnxruntime, video I/O, folders and presets."""
    from engine.diagnostics.doctor import run_doctor
    from engine.presets import load_preset

    settings = settings_from(ctx)
    for name in preset or []:
        load_preset(name, settings.presets_dir)  # unknown preset -> one clear line
    report = run_doctor(settings)
    for table in doctor_tables(report):
        console.print(table)
    for name in preset or []:
        r = report.preset(name)
        if r is not None and not r.runnable:
            raise PresetNotRunnable(f"preset '{name}' cannot run here: {r.reason}")


def doctor_tables(report) -> list[Table]:
    """The doctor report as two rich tables (system, presets)."""
    t = Table(title="system")
    t.add_column("check")
    t.add_column("status")
    t.add_column("detail")
    for c in report.checks:
        t.add_row(c.name, f"[{STYLE[c.status]}]{c.status}[/]", c.detail)
    p = Table(title=f"presets (weights root {report.weights_root})")
    p.add_column("preset", no_wrap=True)
    p.add_column("task")
    p.add_column("can run")
    p.add_column("commercial", no_wrap=True)  # every component's licence allows commercial use
    p.add_column("why", overflow="fold")
    for r in report.presets:
        commercial = "[green]yes[/]" if r.commercial_ok else "[yellow]no[/]"
        why = r.reason
        if not r.commercial_ok and "commercial" not in why:
            why += f" (non-commercial licence: {', '.join(r.non_commercial)})"
        p.add_row(r.name, r.task, "[green]yes[/]" if r.runnable else "[red]no[/]", commercial, why)
    return [t, p]
