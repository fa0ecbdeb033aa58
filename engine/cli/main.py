"""`flx`: the FLX Engine command line. Every subcommand has `--help`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from .context import store_globals
from .errors import report_error

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
    home: Optional[Path] = typer.Option(None, "--home", help="Engine data folder (env FLX_HOME)."),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="Weights root (env FLX_WEIGHTS_DIR)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cuda or cpu (env FLX_DEVICE)."),
) -> None:
    store_globals(ctx, home, weights_dir, device)


def _register() -> None:
    # Explicit imports, one per command group (no folder scanning).
    from . import character, demo, doctor, score, weights

    app.add_typer(weights.app, name="weights")
    app.add_typer(character.app, name="character")
    app.command("doctor")(doctor.doctor)
    app.command("demo")(demo.demo)
    app.command("score")(score.score)


_register()


def main() -> None:
    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the single CLI boundary
        sys.exit(report_error(exc))


if __name__ == "__main__":
    main()
