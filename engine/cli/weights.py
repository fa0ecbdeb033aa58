"""`flx weights list|verify|fetch|import`: thin over engine.models."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine._core.errors import WeightsIntegrityError
from engine.models.fetch import fetch as fetch_component
from engine.models.fetch import import_weights
from engine.models.store import WeightsStore, fix_hint

from .context import settings_from

app = typer.Typer(help="List, verify, fetch and import model weights.", no_args_is_help=True)
console = Console(highlight=False)

STATE_STYLE = {
    "verified": "green",
    "present": "green",
    "unlocked": "yellow",
    "missing": "dim",
    "corrupt": "bold red",
    "failed": "bold red",
}


def _store(ctx: typer.Context) -> WeightsStore:
    return WeightsStore(settings_from(ctx))


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@app.command("list")
def list_cmd(ctx: typer.Context, all_: bool = typer.Option(True, "--all/--present", help="Show missing ones too.")):
    """What is present, verified, missing, its size on disk, and whether commercial use may load it."""
    store = _store(ctx)
    commercial_on = store.settings.commercial_use
    title = f"weights in {store.root}" + (" (commercial use on: NC components are refused)" if commercial_on else "")
    table = Table(title=title)
    for col in ("id", "role", "state", "on disk", "licence", "commercial", "source"):
        table.add_column(col)
    for entry in store.manifest.components:
        st = store.status(entry.id)
        if not all_ and st.state == "missing":
            continue
        lic = entry.license.name if entry.license.commercial_use else f"[yellow]{entry.license.name} (NC)[/]"
        src = entry.source
        where = src.repo_id if src.type == "hub" else (src.url if src.type == "url" else f"generated ({src.builder})")
        if entry.license.commercial_use:
            usable = "[green]yes[/]"
        else:
            usable = "[bold red]no (refused)[/]" if commercial_on else "[yellow]no[/]"
        table.add_row(
            entry.id,
            entry.role.value,
            f"[{STATE_STYLE[st.state]}]{st.state}[/]",
            _gb(st.size_bytes),
            lic,
            usable,
            where,
        )
    console.print(table)


@app.command("verify")
def verify_cmd(
    ctx: typer.Context, ids: list[str] | None = typer.Argument(None, help="Component ids (default: all locked).")
):
    """Re-hash every locked file and compare with the lock; the outcome is recorded in the lock (a failed
    component is refused by every load until a verify passes). Non-zero exit on any mismatch."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    store = _store(ctx)
    with Progress(
        "hashing", BarColumn(), DownloadColumn(), TimeRemainingColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task("verify", total=store.locked_bytes(ids or None))
        results = store.verify(ids or None, progress=lambda n: bar.advance(task, n))
    if not results:
        console.print("no weights recorded yet: run `flx weights fetch ID` or `python scripts/make_tiny_weights.py`")
        return
    bad = []
    for st in results:
        style = STATE_STYLE[st.state]
        console.print(f"[{style}]{st.state:9}[/] {st.entry.id}  ({len(st.problems)} problem(s), {_gb(st.size_bytes)})")
        for p in st.problems:
            detail = f" expected {p.expected[:16]}… got {p.actual[:16]}…" if p.problem == "modified" else ""
            console.print(f"    [red]{p.problem}[/] {st.folder / p.path}{detail}")
        if not st.ok:
            bad.append(st)
    if bad:
        first = bad[0]
        if first.lock is None:  # never fetched or imported: nothing to re-fetch, just fetch
            what = f"{first.entry.id} is {first.state}"
            fix = (
                fix_hint(first.entry, None)
                if first.entry.is_generated
                else f"fetch it with `flx weights fetch {first.entry.id}` (or `flx weights import PATH`)"
            )
        else:
            what = (
                f"{first.entry.id}/{first.problems[0].path} {first.problems[0].problem}"
                if first.problems
                else f"{first.entry.id} is {first.state}"
            )
            fix = fix_hint(first.entry, first.lock)
        raise WeightsIntegrityError(f"{len(bad)} component(s) failed verification (first: {what}): {fix}")


@app.command("fetch")
def fetch_cmd(
    ctx: typer.Context,
    ids: list[str] = typer.Argument(..., help="Component ids from the manifest."),
    force: bool = typer.Option(False, "--force", help="Download every file again, even if verified."),
):
    """Download components from the Hub/URL (resumable, with progress), check them against the hashes the Hub
    publishes, and lock their hashes."""
    store = _store(ctx)
    for cid in ids:
        ent = fetch_component(store, cid, force=force)
        console.print(f"[green]fetched[/] {cid} @ {ent.revision} ({len(ent.files)} files)")


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="A folder you already have (Hub cache repo, ComfyUI models/, a component)."),
    component_id: str | None = typer.Option(None, "--id", help="Manifest id to register it as (default: detect)."),
):
    """Register weights you already have, hashing them in place rather than copying."""
    store = _store(ctx)
    for cid in import_weights(store, path, component_id):
        console.print(f"[green]imported[/] {cid} from {escape(str(path))}")
