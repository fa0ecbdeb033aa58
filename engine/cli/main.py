"""`flx`: the FLX Engine command line. Every subcommand has `--help`."""

from __future__ import annotations

import sys
from enum import Enum

import typer

from .context import store_globals
from .errors import report_error


class DeviceChoice(str, Enum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


app = typer.Typer(
    name="flx",
    help="FLX Engine: consistent characters in stills and video, on your own machine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    # Text, not Path: typer turns "" into Path("."), and an empty --home must be an error, not the current folder.
    home: str | None = typer.Option(None, "--home", help="Engine data folder (env FLX_HOME)."),
    weights_dir: str | None = typer.Option(None, "--weights-dir", help="Weights root (env FLX_WEIGHTS_DIR)."),
    device: DeviceChoice | None = typer.Option(None, "--device", help="Compute device (env FLX_DEVICE)."),
    allow_unverified: bool = typer.Option(
        False, "--allow-unverified", help="Load weights that fail verification (explicit override; outputs say so)."
    ),
    commercial: bool = typer.Option(
        False,
        "--commercial",
        help="Commercial use (env FLX_COMMERCIAL_USE=1): refuse components whose licence excludes it.",
    ),
) -> None:
    store_globals(
        ctx, home, weights_dir, device.value if device else None, allow_unverified or None, commercial or None
    )


def _register() -> None:
    # Explicit imports, one per command group (no folder scanning).
    from . import batch, character, demo, doctor, pack, prompt, render, score, serve, train, video, weights

    app.add_typer(weights.app, name="weights")
    app.add_typer(character.app, name="character")
    app.add_typer(batch.app, name="batch")
    app.command("doctor")(doctor.doctor)
    app.command("demo")(demo.demo)
    app.command("score")(score.score)
    app.command("still")(render.still)
    app.command("clip")(render.clip)
    app.command("prompt")(prompt.prompt)
    app.command("pack")(pack.pack)
    app.command("video")(video.video)
    app.command("sequence")(video.sequence)
    app.command("train")(train.train)
    app.command("serve")(serve.serve)


_register()


def _quiet_libraries() -> None:
    """Library chatter (torchvision fallbacks, per-component load bars) is noise on our CLI."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _show_engine_warnings() -> None:
    """Engine warnings (e.g. unverified weights loaded) become one yellow line each on stderr; others as usual."""
    import warnings

    from engine._core.errors import EngineWarning

    from .errors import err_console

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, EngineWarning):
            from rich.markup import escape

            from engine._core.text import printable

            err_console.print(f"[bold yellow]warning:[/] {escape(printable(message))}", emoji=False)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    warnings.simplefilter("always", EngineWarning)


def main() -> None:
    _quiet_libraries()
    _show_engine_warnings()
    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the single CLI boundary
        sys.exit(report_error(exc))


if __name__ == "__main__":
    main()
