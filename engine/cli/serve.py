"""`flx serve`: the on-prem server (API + web page) on one warm Engine, with one GPU worker for the batch queue.

Thin: checks the bind and token flags, builds the app (`engine.server.app.create_app`) and runs it with uvicorn.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from .context import settings_from

console = Console(highlight=False, soft_wrap=True)


def _url(host: str, port: int) -> str:
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{h}:{port}/"


def serve(
    ctx: typer.Context,
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind. Anything but loopback (127.0.0.1, ::1, localhost) needs a token."
    ),
    port: int = typer.Option(7860, "--port", min=1, max=65535, help="TCP port."),
    no_token: bool = typer.Option(
        False, "--no-token", help="Serve without an access token (refused on anything but a loopback bind)."
    ),
    cors_origin: list[str] = typer.Option(
        [],
        "--cors-origin",
        help="A browser origin allowed to call the API, e.g. https://tools.studio:8443 "
        "(repeatable; never '*'). CORS is off without it.",
    ),  # fmt: skip
    worker: bool = typer.Option(
        True,
        "--worker/--no-worker",
        help="Start the GPU worker process that runs queued batches (`flx batch worker`).",
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level (critical, error, warning, info)."),
) -> None:
    """Serve the character library, batch jobs and outputs over HTTP, with the web page at /.

    On a public bind the first start generates an access token, stores it in <home>/server-token (0600) and prints
    it once; clients send it as `Authorization: Bearer <token>` (the page asks for it)."""
    import uvicorn

    from engine.api import Engine
    from engine.jobs.store import default_store_path
    from engine.server.app import create_app
    from engine.server.security import ensure_token, is_loopback, token_path

    from .errors import fail

    if log_level not in ("critical", "error", "warning", "info", "debug"):
        fail(f"--log-level {log_level!r}: use critical, error, warning, info or debug")
    loopback = is_loopback(host)
    if no_token and not loopback:
        fail(
            f"--no-token is refused on {host}: anyone on the network could use this machine; drop --no-token "
            "(a token is generated) or bind --host 127.0.0.1"
        )
    settings = settings_from(ctx)
    token, created = (None, False) if loopback else ensure_token(settings.home)
    engine = Engine(settings)
    app = create_app(
        engine, store=default_store_path(settings), token=token, host=host, worker=worker, cors_origins=cors_origin
    )
    console.print(f"FLX Engine server: [bold]{escape(_url(host, port))}[/]  (home {escape(str(settings.home))})")
    if created:
        console.print(
            f"access token (shown once; stored in {escape(str(token_path(settings.home)))}, mode 0600): "
            f"[bold]{token}[/]"
        )
    elif token is not None:
        console.print(f"access token required: it is in {escape(str(token_path(settings.home)))}")
    else:
        console.print("loopback only: no access token needed")
    uvicorn.run(
        app,
        host=host.strip("[]"),
        port=port,
        log_level=log_level,
        proxy_headers=False,  # rate limits count the real peer address; a reverse proxy must do its own limiting
        server_header=False,
        limit_concurrency=512,
        timeout_graceful_shutdown=30,
    )
