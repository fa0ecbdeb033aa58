"""Per-invocation state shared by command groups: the settings built from flags + env."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import typer

from engine._core.settings import EngineSettings


def build_settings(ctx: typer.Context | None = None, **overrides) -> EngineSettings:
    """Flags over FLX_* environment variables; a bad value is one ConfigError naming the setting."""
    from pydantic import ValidationError

    from engine._core.errors import ConfigError

    base: dict = {}
    if ctx is not None and ctx.obj:
        base.update({k: v for k, v in ctx.obj.items() if v is not None})
    base.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return EngineSettings(**base)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        from engine._core.text import printable

        msg = str(err["msg"]).replace("Value error, ", "")
        raise ConfigError(
            f"setting '{key}' (flag --{key.replace('_', '-')} or env FLX_{key.upper()}): {msg}"
            f" (got {printable(repr(err.get('input')), limit=80)})"
        ) from None


def settings_from(ctx: typer.Context) -> EngineSettings:
    """Settings for this command: global flags (stored on the root context) over env vars."""
    root = ctx.find_root()
    return build_settings(root)


def store_globals(
    ctx: typer.Context,
    home: str | Path | None,
    weights_dir: str | Path | None,
    device: str | None,
    allow_unverified: bool | None = None,
    commercial: bool | None = None,
) -> None:
    ctx.obj = {
        "home": home,
        "weights_dir": weights_dir,
        "device": device,
        "allow_unverified_weights": allow_unverified,
        "commercial_use": commercial,
    }


@contextlib.contextmanager
def first_ctrl_c_stops(console, message: str) -> Iterator[dict]:
    """Inside the block the first Ctrl-C only sets `state["asked"]` (printing `message`): the work stops at its next
    safe point (a checkpoint, the next step); a second Ctrl-C interrupts at once."""
    import signal

    state = {"asked": False}

    def on_sigint(signum, frame):
        if state["asked"]:
            raise KeyboardInterrupt
        state["asked"] = True
        console.print(message)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
