"""The one place where engine errors become CLI output and exit codes."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from engine._core.errors import EngineError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def report_error(exc: BaseException) -> int:
    """Print one line for a user-facing error and return its exit code."""
    if isinstance(exc, EngineError):
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", emoji=False)
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        err_console.print("[bold red]interrupted[/]")
        return 130
    raise exc


def fail(message: str, code: int = 2) -> None:
    """Stop a command with one line (for flag combinations typer cannot check)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", emoji=False)
    sys.exit(code)
