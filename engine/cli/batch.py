"""`flx batch ...`: run job files through the embedded queue (or Ray), follow them from another terminal, cancel.

Thin: each command reads its flags, calls `engine.jobs` over one `Engine`, and prints.
"""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .context import first_ctrl_c_stops, settings_from

app = typer.Typer(help="Batch jobs: run job files, follow and cancel them.", no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)

EXIT_SHOTS_FAILED = 10
_STYLE = {"done": "green", "failed": "red", "running": "cyan", "pending": "white", "cancelled": "yellow",
          "queued": "white"}  # fmt: skip


def e(value: object) -> str:
    from engine._core.text import printable

    return escape(printable(value))


def _store(ctx: typer.Context, *, readonly: bool = False):
    from engine.jobs.store import JobStore, default_store_path

    return JobStore(default_store_path(settings_from(ctx)), readonly=readonly)


def _out_dir(job, out: Path | None, outputs_dir: Path) -> Path:
    """`--out`, else the file's `output:` (relative to the file), else `<outputs>/batch/NAME` (as the server)."""
    if out is not None:
        return out
    if job.output:
        return Path(job.path(job.output))
    return Path(outputs_dir) / "batch" / job.name


@app.command("validate")
def validate(ctx: typer.Context, job_file: Path = typer.Argument(..., help="Job file (YAML or JSON).")) -> None:
    """Check a job file and this machine before any GPU time is spent: the schema of every shot, characters,
    presets (runnable here), weights (present and verified) and input files."""
    from engine.api import Engine
    from engine.jobs.checks import validate_job
    from engine.jobs.specs import load_job

    job = load_job(job_file)
    problems = validate_job(Engine(settings_from(ctx)), job)
    for p in problems:
        console.print(f"[red]problem:[/] {e(p)}")
    if problems:
        console.print(f"[red]{len(problems)} problem(s)[/] in {e(job_file)}: fix them, then `flx batch run`")
        raise typer.Exit(2)
    kinds: dict[str, int] = {}
    for s in job.shots:
        kinds[s.kind] = kinds.get(s.kind, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in kinds.items())
    console.print(
        f"[green]ok[/] '{e(job.name)}': {len(job.shots)} shot(s) ({summary}), {len(job.characters)} character(s)"
    )


@app.command("run")
def run(
    ctx: typer.Context,
    job_file: Path = typer.Argument(..., help="Job file (YAML or JSON)."),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: the file's `output`, else <outputs>/batch/NAME, FLX_OUTPUTS_DIR)."
    ),  # fmt: skip
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run shots that failed last time again."),
    ray: str | None = typer.Option(
        None, "--ray", help="Run on a Ray cluster: auto or its address (extra `distributed`)."
    ),  # fmt: skip
    ray_output: str = typer.Option(
        "bytes",
        "--ray-output",
        help="bytes (workers return files) or shared (workers write to the shared output folder).",
    ),  # fmt: skip
    skip_validate: bool = typer.Option(False, "--no-validate", help="Do not check presets and weights first."),
) -> None:
    """Run a job file: finished shots (same content key) are skipped, failures are listed at the end (exit 10).
    Safe to kill at any time: run it again to continue."""
    from engine.api import Engine
    from engine.jobs.checks import validate_job
    from engine.jobs.specs import load_job

    job = load_job(job_file)
    engine = Engine(settings_from(ctx))
    if not skip_validate:
        problems = validate_job(engine, job)
        if problems:
            for p in problems:
                console.print(f"[red]problem:[/] {e(p)}")
            raise typer.Exit(2)
    out_dir = _out_dir(job, out, engine.settings.outputs_dir)
    backend = None
    if ray is not None:
        from engine.distributed.ray_backend import RayBackend

        if ray_output not in ("bytes", "shared"):
            raise typer.BadParameter("use bytes or shared", param_hint="--ray-output")
        backend = RayBackend(ray, output_mode=ray_output, engine=engine)
        backend.connect()  # a missing cluster is one line, before anything is queued
    with backend if backend is not None else contextlib.nullcontext(), _store(ctx) as store:
        batch_id = store.submit(job, out_dir=out_dir, source=str(job_file.resolve()))
        console.print(f"batch [bold]{e(job.name)}[/] ({batch_id}) -> {e(out_dir)}")
        info = _run_with_bars(
            engine, store, batch_id, retry_failed=retry_failed, backend=backend, total=len(job.shots)
        )
    _summary(info)
    console.print(f"manifest: {e(Path(info.out_dir) / 'manifest.json')}")
    if info.status == "cancelled":
        console.print("[yellow]cancelled[/]: run the same command to continue")
        raise typer.Exit(130)
    if info.failed:
        raise typer.Exit(EXIT_SHOTS_FAILED)


def _run_with_bars(engine, store, batch_id, *, retry_failed, backend, total):
    from engine.jobs.runner import run_batch

    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console, transient=False) as bars:
        overall = bars.add_task("[bold]batch", total=total, info="")
        shot_task = bars.add_task("  shot", total=None, info="", visible=False)

        def progress(event: str, data: dict) -> None:
            if event == "skip":
                bars.advance(overall)
                bars.update(overall, info=f"{data['shot']}: done earlier (same key)")
            elif event == "start":
                bars.reset(shot_task, total=None, visible=True)
                bars.update(shot_task, description=f"  {e(data['shot'])}", info=e(data.get("preset") or ""))
            elif event == "step":
                bars.update(shot_task, completed=data["step"], total=data["steps"])
            elif event == "end":
                bars.advance(overall)
                bars.update(shot_task, visible=False)
                msg = data["status"] if data["status"] != "failed" else f"[red]failed[/]: {e(data.get('error'))}"
                bars.console.print(f"  {e(data['shot'])}: {msg}")

        stopping = "[yellow]stopping at the next step (training saves a checkpoint); Ctrl-C again to abort[/]"
        with first_ctrl_c_stops(console, stopping) as stop:
            return run_batch(
                engine, store, batch_id, retry_failed=retry_failed, backend=backend, progress=progress,
                should_stop=lambda: stop["asked"],
            )  # fmt: skip


def _summary(info) -> None:
    counts = ", ".join(f"[{_STYLE.get(k, 'white')}]{n} {k}[/]" for k, n in sorted(info.counts.items()))
    console.print(f"[bold]{e(info.name)}[/]: {info.status} ({counts})")
    for s in info.failed:
        console.print(f"  [red]failed[/] {e(s.id)} ({s.kind}): {e(s.error)}")


@app.command("status")
def status(
    ctx: typer.Context,
    batch: str | None = typer.Argument(None, help="Batch id or name (default: the latest)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """A batch's shots, progress and failures (read-only: safe while it runs, from another terminal)."""
    with _store(ctx, readonly=True) as store:
        if batch is None:
            latest = store.batches(limit=1)
            if not latest:
                console.print("no batches yet: `flx batch run JOB.yaml`")
                return
            batch = latest[0].id
        info = store.batch(batch)
    if as_json:
        console.print_json(json.dumps(info.model_dump(mode="json")))
        return
    p = info.progress
    step = f" step {p.step}/{p.steps}" if p.step is not None else ""
    eta = f", ETA {p.eta_s:.0f} s" if p.eta_s is not None else ""
    console.print(f"[bold]{e(info.name)}[/] ({info.id}) {info.status}; {e(info.out_dir)}")
    if info.current and info.status == "running":
        console.print(f"  running {e(info.current)}{step}{eta}")
    table = Table()
    for col in ("shot", "kind", "status", "score", "attempts", "error"):
        table.add_column(col)
    for s in info.shots:
        score = "" if s.score is None else f"{s.score:.1f}"
        table.add_row(e(s.id), s.kind, f"[{_STYLE.get(s.status, 'white')}]{s.status}[/]", score, str(s.attempts),
                      e(s.error or ""))  # fmt: skip
    console.print(table)


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """Every batch in this engine home's job store, newest first."""
    with _store(ctx, readonly=True) as store:
        rows = store.batches()
    table = Table()
    for col in ("id", "name", "status", "shots", "updated", "output"):
        table.add_column(col)
    for b in rows:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(b.counts.items()))
        table.add_row(b.id, e(b.name), b.status, counts, b.updated, e(b.out_dir))
    console.print(table)


@app.command("cancel")
def cancel(ctx: typer.Context, batch: str = typer.Argument(..., help="Batch id or name.")) -> None:
    """Stop a batch at the running shot's next step (finished shots are kept; `flx batch run` continues it)."""
    with _store(ctx) as store:
        info = store.cancel(batch)
    console.print(f"[yellow]cancel requested[/] for '{e(info.name)}' ({info.id}, {info.status})")


@app.command("worker")
def worker(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="Exit when the queue is empty."),
    poll: float = typer.Option(0.5, "--poll", min=0.05, max=60.0, help="Seconds between looks at the queue."),
) -> None:
    """Run queued batches one after another on one warm Engine (the server starts one of these)."""
    import os
    import signal

    from engine.api import Engine
    from engine.jobs.worker import run_worker

    stop = {"asked": False}

    def on_term(signum, frame):
        stop["asked"] = True

    signal.signal(signal.SIGTERM, on_term)
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    with _store(ctx) as store:
        ran = run_worker(
            Engine(settings_from(ctx)), store, worker_id=worker_id, should_stop=lambda: stop["asked"],
            poll_s=poll, once=once,
        )  # fmt: skip
    console.print(f"worker {worker_id}: {ran} batch(es) run")
