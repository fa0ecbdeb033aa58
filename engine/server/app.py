"""`create_app(engine, ...)`: the FastAPI app of `flx serve` (API, page, OpenAPI schema at /openapi.json).

Example:
    >>> from engine.api import Engine
    >>> from engine.server.app import create_app
    >>> app = create_app(Engine(settings), store=settings.home / "jobs.sqlite", token=None, host="127.0.0.1")
    >>> # uvicorn.run(app, host="127.0.0.1", port=7860)

Security by default (see docs/server.md): a bind off loopback needs a token (`InputError` otherwise); CORS is off
unless origins are named (never `*`); state-changing requests from another origin are refused; on a loopback bind
without a token the Host header must name this machine (a DNS-rebinding page cannot reach the API).
"""

import contextlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from engine._core.errors import InputError
from engine._core.text import printable

from .deps import COOKIE, ServerLimits, ServerState, client_of, require_token, server_state
from .security import FailureLimiter, TokenGuard, is_loopback

if TYPE_CHECKING:
    from engine.api import Engine

_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")
WORKER_CHECK_S = 2.0
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
}
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def static_dir() -> Path:
    """engine/server/static: the page (index.html and its files), served at `/` and `/static`."""
    return Path(__file__).resolve().parent / "static"


def check_cors_origins(origins: Iterable[str]) -> tuple[str, ...]:
    """`scheme://host[:port]` origins only: no wildcard, no path, no trailing slash."""
    out = []
    for o in origins:
        if not isinstance(o, str) or "*" in o or not _ORIGIN.match(o):
            raise InputError(
                f"--cors-origin {printable(o, limit=80)!r}: give one exact origin such as https://studio.example:8443 "
                "(no '*', no path)"
            )
        out.append(o.rstrip("/"))
    return tuple(dict.fromkeys(out))


class RequestGuard:
    """Pure ASGI middleware: refuses cross-origin state changes and, on an open loopback bind, foreign Host names.

    - A POST/PUT/PATCH/DELETE whose `Origin` is neither this server nor a `--cors-origin` gets 403 (a page on
      another site can send a multipart form to 127.0.0.1 without CORS; this stops it).
    - Without a token (loopback), the `Host` header must be a loopback name or address: a DNS-rebinding attack
      makes the browser send `Host: evil.example` to 127.0.0.1.
    """

    def __init__(self, app, *, allowed_origins: tuple[str, ...], check_host: bool):
        self.app = app
        self.allowed_origins = allowed_origins
        self.check_host = check_host

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        problem = None
        if self.check_host and not is_loopback(_hostname(host)):
            problem = (
                f"Host '{printable(host, limit=80)}' is not this machine: open the page at http://127.0.0.1:PORT "
                "(or start the server with a token to serve other names)"
            )
        elif scope["method"] in UNSAFE_METHODS:
            origin = headers.get("origin")
            same = {f"http://{host}", f"https://{host}"}
            if origin is not None and origin not in same and origin not in self.allowed_origins:
                problem = f"requests from origin '{printable(origin, limit=80)}' are not allowed (see --cors-origin)"
            elif headers.get("sec-fetch-site") == "cross-site" and origin not in self.allowed_origins:
                problem = "cross-site requests are not allowed (see --cors-origin)"
        if problem is None:
            return await self.app(scope, receive, send)
        from .errors import error_body

        await JSONResponse(error_body(problem), status_code=403)(scope, receive, send)


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class JSONTooLarge:
    """Starlette's body limit answers a too-large Content-Length with a plain-text 413 from outside the exception
    handlers; this turns that one response into the API's JSON error shape."""

    BODY = b'{"error":"request body too large: send smaller or fewer files (limits in docs/server.md)"}'

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        swapped = False

        async def send_json(message):
            nonlocal swapped
            if message["type"] == "http.response.start" and message["status"] == 413:
                ctype = dict(message.get("headers", [])).get(b"content-type", b"")
                if ctype.startswith(b"text/plain"):
                    swapped = True
                    headers = [(k, v) for k, v in message.get("headers", []) if k not in (b"content-type",
                               b"content-length")]  # fmt: skip
                    headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(self.BODY))]
                    message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and swapped:
                if swapped == "sent":
                    return
                swapped = "sent"
                message = {"type": "http.response.body", "body": self.BODY, "more_body": False}
            await send(message)

        await self.app(scope, receive, send_json)


class SessionRequest(BaseModel):
    token: str = Field(min_length=1, max_length=512, description="The access token (from <home>/server-token).")


class SecurityHeaders:
    def __init__(self, app):
        self.app = app
        self.extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [kv for kv in self.extra if kv[0] not in have]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    engine: "Engine",
    *,
    store: str | Path | Any | None,
    token: str | None,
    host: str,
    worker: bool = True,
    cors_origins: Iterable[str] = (),
    limits: ServerLimits | None = None,
    outputs_root: str | Path | None = None,
) -> FastAPI:
    """The FastAPI app over one warm `Engine`.

    Args:
        engine (`Engine`): serves every request (its settings name the library, outputs and weights).
        store (`Path`, `JobStore` or `None`): the job store file (`engine.jobs.store.default_store_path`); None
            serves characters only.
        token (`str` or `None`): the access token; None is allowed only when `host` is loopback.
        host (`str`): the address the server binds (decides whether a token is required).
        worker (`bool`, *optional*, defaults to `True`): start one `flx batch worker` subprocess for the queue.
        cors_origins (`Iterable[str]`, *optional*): origins allowed to call the API from a browser (never `*`).
        limits (`ServerLimits`, *optional*): upload and rate bounds.
        outputs_root (`Path`, *optional*): where submitted batches write (default `settings.outputs_dir`).

    Raises:
        `InputError`: no token on a public bind, a bad CORS origin.
    """
    import engine as engine_pkg

    from . import errors
    from .routers import characters, jobs, outputs, presets

    loopback = is_loopback(host)
    if token is None and not loopback:
        raise InputError(
            f"refusing to serve on {printable(host, limit=80)} without an access token: anyone on the network could "
            "use this machine; start `flx serve` without --no-token (it generates one) or bind 127.0.0.1"
        )
    limits = limits or ServerLimits()
    origins = check_cors_origins(cors_origins)
    store_path = None if store is None else Path(getattr(store, "path", store))
    state = ServerState(
        engine=engine,
        store_path=store_path,
        guard=TokenGuard(token, FailureLimiter(limits.max_failures, limits.failure_window_s)),
        limits=limits,
        host=host,
        outputs_root=Path(outputs_root or engine.settings.outputs_dir).resolve(),
        cors_origins=origins,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        import anyio

        if store_path is not None:
            from engine.jobs.store import JobStore

            JobStore(store_path).close()  # create the queue before the worker looks at it
            if worker:
                from .worker import WorkerProcess

                state.worker = WorkerProcess(engine.settings)
                state.worker.start()
        try:
            async with anyio.create_task_group() as task_group:
                if state.worker is not None:

                    async def watch():
                        while True:
                            await anyio.sleep(WORKER_CHECK_S)
                            state.worker.check()

                    task_group.start_soon(watch)
                yield
                task_group.cancel_scope.cancel()
        finally:
            if state.worker is not None:
                await anyio.to_thread.run_sync(state.worker.stop)

    app = FastAPI(
        title="FLX Engine",
        version=getattr(engine_pkg, "__version__", "0"),
        summary="Consistent characters in stills and video: the character library, batch jobs and their outputs.",
        docs_url=None,  # the Swagger page loads its assets from a CDN; the schema itself is at /openapi.json
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.flx = state
    errors.install(app)

    @app.get("/api/health", tags=["server"], summary="Liveness, version and whether a token is needed")
    def health() -> dict:
        w = state.worker
        return {
            "ok": True,
            "version": app.version,
            "auth": state.guard.required,
            "worker": None if w is None else {"alive": w.alive, "pid": w.pid, "restarts": w.restarts},
        }

    @app.post(
        "/api/session", tags=["server"], summary="Sign in: sets the HttpOnly `flx_token` cookie", max_body_size=4096
    )
    def sign_in(body: SessionRequest, request: Request) -> JSONResponse:
        st = server_state(request)
        st.guard.authorize(body.token, client_of(request))
        response = JSONResponse({"ok": True, "auth": st.guard.required})
        if st.guard.required:
            response.set_cookie(COOKIE, body.token, httponly=True, samesite="strict", path="/")
        return response

    @app.delete("/api/session", tags=["server"], summary="Sign out (clears the cookie)")
    def sign_out() -> JSONResponse:
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE, path="/")
        return response

    auth = [Depends(require_token)]
    for module in (characters, jobs, outputs, presets):
        app.include_router(module.build(limits), dependencies=auth)

    page = static_dir()

    @app.get("/", include_in_schema=False)
    def index():
        index_file = page / "index.html"
        if not index_file.is_file():
            return JSONResponse(errors.error_body("the web page is not installed (engine/server/static)"), 404)
        return FileResponse(index_file, media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=page, check_dir=False), name="static")

    app.add_middleware(RequestGuard, allowed_origins=origins, check_host=loopback and token is None)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(origins),
            allow_credentials=True,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(SecurityHeaders)
    app.add_middleware(JSONTooLarge)
    return app


__all__ = ["check_cors_origins", "create_app", "static_dir"]
