"""The one place where engine errors become HTTP status codes and JSON bodies `{"error": "one line"}`.

Route handlers never build error responses themselves: they call the engine, and whatever `EngineError` comes
back is mapped here (most specific class first). The server's own refusals (`RequestRefused` and its subclasses:
401, 403, 413, 415, 429) are `EngineError`s too, so one handler formats every refusal. Anything else is a bug: it
is logged with its traceback on the server and the client gets a 500 with one line and no internals.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from engine._core.errors import (
    AmbiguousFace,
    CharacterFileError,
    CharacterNotFound,
    ConfigError,
    DamagedMedia,
    DeviceError,
    EngineError,
    FaceNotFound,
    InputError,
    JobCancelled,
    LicenseRefused,
    ModelNotFound,
    NetworkUnavailable,
    OutputError,
    ScoreBelowMinimum,
    WeightsIntegrityError,
)
from engine._core.text import printable
from engine.jobs.store import BatchNotFound

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger("engine.server")

MAX_MESSAGE = 500


class RequestRefused(EngineError):
    """A request the server refuses before the engine sees it. `status` is its HTTP status code."""

    status = 400
    exit_code = 2


class Unauthorized(RequestRefused):
    status = 401


class Forbidden(RequestRefused):
    status = 403


class NotFound(RequestRefused):
    status = 404


class TooLarge(RequestRefused):
    status = 413


class UnsupportedMediaType(RequestRefused):
    status = 415


class RateLimited(RequestRefused):
    status = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


# Most specific first: the first class an error is an instance of gives its status.
STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (CharacterNotFound, 404),
    (BatchNotFound, 404),
    (CharacterFileError, 422),
    (ConfigError, 422),
    (FaceNotFound, 422),
    (AmbiguousFace, 422),
    (DamagedMedia, 422),
    (ScoreBelowMinimum, 422),
    (InputError, 400),
    (LicenseRefused, 403),
    (JobCancelled, 409),
    (ModelNotFound, 503),
    (DeviceError, 503),
    (NetworkUnavailable, 503),
    (WeightsIntegrityError, 500),
    (OutputError, 500),
    (EngineError, 500),
)


def status_for(exc: BaseException) -> int:
    """The HTTP status of an engine error."""
    if isinstance(exc, RequestRefused):
        return exc.status
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def message_of(exc: BaseException) -> str:
    """One printable line (no newlines, control or bidi characters), bounded."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return printable(text, limit=MAX_MESSAGE)


def error_body(message: str) -> dict:
    return {"error": message}


def install(app: FastAPI) -> None:
    """Register the exception handlers on `app` (engine errors, request validation, HTTP errors, bugs)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def respond(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(error_body(message), status_code=status, headers=headers)

    async def on_engine_error(request, exc: EngineError):
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
        status = status_for(exc)
        if status >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, message_of(exc))
        return respond(status, message_of(exc), headers)

    async def on_validation_error(request, exc: RequestValidationError):
        errs = exc.errors()
        err = errs[0] if errs else {}
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        msg = str(err.get("msg", "invalid request")).replace("Value error, ", "")
        return respond(422, printable(f"{loc}: {msg}", limit=MAX_MESSAGE))

    async def on_http_error(request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {printable(request.url.path, limit=200)} (see /openapi.json)"
        elif exc.status_code == 413:
            detail = "request body too large: send smaller or fewer files (limits in docs/server.md)"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {printable(request.url.path, limit=200)}"
        return respond(exc.status_code, message_of(detail), getattr(exc, "headers", None))

    async def on_bug(request, exc: Exception):
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return respond(500, f"internal error ({type(exc).__name__}): see the server log")

    app.add_exception_handler(EngineError, on_engine_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_bug)


__all__ = [
    "STATUS",
    "Forbidden",
    "NotFound",
    "RateLimited",
    "RequestRefused",
    "TooLarge",
    "Unauthorized",
    "UnsupportedMediaType",
    "install",
    "message_of",
    "status_for",
]
