"""What every route depends on: the server's state, the token check, and the checks of everything a request hands
us (names, ids, output paths, uploaded photos and `.flx` files, job documents). Each input is checked once, here,
where it enters; the engine then checks it again by its own rules (`engine._core.text`, the `.flx` reader).

Nothing here writes into the library or an output folder: a refused request leaves both as they were. Uploaded
photos are written only to a private temp folder for the duration of the call that analyses them.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from engine._core.errors import InputError
from engine._core.text import check_name, check_text, printable

from .errors import NotFound, TooLarge, UnsupportedMediaType
from .security import TokenGuard

if TYPE_CHECKING:
    from fastapi import UploadFile

    from engine.api import Engine

COOKIE = "flx_token"
MiB = 1024 * 1024
MAX_OUTPUT_PATH = 1024
MAX_CACHED_ROWS = 10_000


class ServerLimits(BaseModel):
    """Upload and request bounds (every one documented in docs/server.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_photos: int = Field(16, ge=1, le=32, description="Photos per upload (a character holds at most 32).")
    max_photo_bytes: int = Field(20 * MiB, ge=1024, le=200 * MiB, description="One photo file.")
    max_pixels: int | None = Field(
        None, ge=1, description="Pixels of one photo (decompression-bomb bound); default the engine's image bound."
    )
    max_flx_bytes: int = Field(
        900 * MiB, ge=1024, le=900 * MiB, description="One uploaded .flx (the reader's own limit is 900 MiB)."
    )
    max_json_bytes: int = Field(MiB, ge=1024, le=16 * MiB, description="A JSON body (job document, variant).")
    max_text_field_bytes: int = Field(256 * 1024, ge=1024, le=MiB, description="A text field of a form (profile).")
    max_failures: int = Field(10, ge=1, le=10_000, description="Failed token attempts per address per window.")
    failure_window_s: float = Field(60.0, gt=0, le=86_400, description="The failed-attempt window (seconds).")

    def pixel_bound(self) -> int:
        from engine.identity.images import DEFAULT_MAX_PIXELS

        return self.max_pixels or DEFAULT_MAX_PIXELS

    @property
    def photos_body(self) -> int:
        return self.max_photos * self.max_photo_bytes + self.max_text_field_bytes + MiB  # + multipart overhead

    @property
    def flx_body(self) -> int:
        return self.max_flx_bytes + MiB


@dataclass
class ServerState:
    """Held by the app (`app.state.flx`): one warm Engine, the job store's path, the token guard and the limits.

    The Engine's face analyzers and caches are not thread-safe, so the calls that analyse photos or change the
    library take `write_lock` (one at a time); reads run in parallel, each opening its own library connection.
    The job store is opened once per thread (SQLite connections are per thread).
    """

    engine: Engine
    store_path: Path | None
    guard: TokenGuard
    limits: ServerLimits
    host: str
    outputs_root: Path
    cors_origins: tuple[str, ...] = ()
    worker: Any = None
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    _local: threading.local = field(default_factory=threading.local)
    _list_extras: dict = field(default_factory=dict)

    def list_extras(self, summary) -> dict:
        """Thumbnail URL and overall quality of a listed character, kept per (id, version): versions never change,
        so a list does not open every character again."""
        from . import views

        key = (summary.id, summary.latest_version)
        extras = self._list_extras.get(key)
        if extras is None:
            extras = views.list_extras(self.engine.character(summary.id))
            if len(self._list_extras) >= MAX_CACHED_ROWS:
                self._list_extras.clear()
            self._list_extras[key] = extras
        return extras

    def store(self):
        """This thread's `JobStore` (opened on first use)."""
        if self.store_path is None:
            raise NotFound("this server has no job store (it was started without one)")
        store = getattr(self._local, "store", None)
        if store is None:
            from engine.jobs.store import JobStore

            store = self._local.store = JobStore(self.store_path)
        return store


def server_state(request: Request) -> ServerState:
    return request.app.state.flx


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def presented_token(request: Request) -> str | None:
    """The bearer token of the `Authorization` header, else the `flx_token` cookie."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE)


def require_token(request: Request) -> None:
    """The auth dependency of every /api route but health and session (no-op on a loopback bind)."""
    state = server_state(request)
    state.guard.authorize(presented_token(request), client_of(request))


# ---------------------------------------------------------------------------------------------- names and paths


def check_ref(value: str, what: str = "character") -> str:
    """A name or id from a request (path parameter, form or JSON field): the engine's name rule, and no path or
    URL syntax (`/`, `\\`, `%`, a leading `.` or `~`), so no name can ever be read as a path, here or downstream."""
    name = check_name(value, what)
    if any(c in name for c in "/\\%") or name.startswith((".", "~")):
        raise InputError(
            f"{what} {printable(name, limit=60)!r} contains '/', '\\' or '%' or starts with '.' or '~': names and "
            "ids sent to the server are plain words, never paths"
        )
    return name


def check_word(value: str, what: str) -> str:
    """A batch id, job name, preset or encoder id: the job files' safe word (`engine.jobs.specs`: 1-64 letters,
    digits, '.', '_' or '-', starting with a letter or digit), and no `..`."""
    from engine.jobs.specs import _WORD  # the one pattern (job names, shot ids, output stems)

    if not isinstance(value, str) or not re.match(_WORD, value) or ".." in value:
        raise InputError(
            f"{what} {printable(value, limit=60)!r} is not an id: use 1-64 letters, digits, '.', '_' or '-'"
        )
    return value


def output_file(out_dir: str | Path, rel: str) -> Path:
    """The file `rel` (a relative POSIX path from a request) inside a batch's `out_dir`, or `NotFound`.

    Refused: NUL and control characters, backslashes, `%` (never decoded twice), absolute paths, empty, `.` and `..` segments, hidden names
    (`.` temp files), and anything that resolves (symlinks followed) outside `out_dir`."""
    check_text(rel, "output path", max_len=MAX_OUTPUT_PATH, multiline=False)
    if "\\" in rel or "%" in rel or rel.startswith("/") or "\0" in rel:
        raise InputError(f"output path {printable(rel, limit=80)!r}: give a path relative to the batch's folder")
    parts = rel.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise InputError(
            f"output path {printable(rel, limit=80)!r} has an empty, '.', '..' or hidden part: give the path "
            "listed by GET /api/outputs"
        )
    base = Path(out_dir).resolve()
    target = (base / PurePosixPath(*parts)).resolve()
    if not target.is_relative_to(base) or not target.is_file():
        raise NotFound(f"no output {printable(rel, limit=80)!r} in this batch: see GET /api/outputs?job=ID")
    return target


# ---------------------------------------------------------------------------------------------- uploads

_MAGIC = (
    ("png", "image/png", lambda b: b.startswith(b"\x89PNG\r\n\x1a\n")),
    ("jpeg", "image/jpeg", lambda b: b.startswith(b"\xff\xd8\xff")),
    ("webp", "image/webp", lambda b: len(b) >= 12 and b[:4] == b"RIFF" and b[8:12] == b"WEBP"),
)


def image_kind(data: bytes) -> str | None:
    """`png`, `jpeg` or `webp` by the file's first bytes (never by its name), else None."""
    for kind, _, test in _MAGIC:
        if test(data[:16]):
            return kind
    return None


@dataclass(frozen=True)
class Photo:
    filename: str
    data: bytes
    kind: str


def _upload_name(upload: UploadFile, what: str, index: int) -> str:
    raw = upload.filename or f"photo-{index}"
    return check_ref(raw, f"{what} file name")


def _size(upload: UploadFile) -> int:
    if upload.size is not None:
        return int(upload.size)
    f = upload.file
    pos = f.tell()
    f.seek(0, io.SEEK_END)
    n = f.tell()
    f.seek(pos)
    return n


def check_photo_bytes(data: bytes, name: str, limits: ServerLimits) -> str:
    """The photo's format by magic bytes (415 otherwise) and its pixel count from the header (413 over the bound)
    without decoding the pixels."""
    from PIL import Image

    kind = image_kind(data)
    if kind is None:
        raise UnsupportedMediaType(
            f"'{printable(name, limit=80)}' is not a PNG, JPEG or WebP image (checked by its content, not its "
            "name): upload a photo"
        )
    bound = limits.pixel_bound()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[kind.upper()]) as im:
                w, h = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooLarge(f"'{printable(name, limit=80)}' declares too many pixels (decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UnsupportedMediaType(
            f"'{printable(name, limit=80)}' is not a readable {kind.upper()} image ({printable(e, limit=120)})"
        ) from None
    if w < 1 or h < 1 or w * h > bound:
        raise TooLarge(
            f"'{printable(name, limit=80)}' is {w}x{h} pixels, over the {bound / 1e6:.0f} MP limit: downscale it "
            "(a 1024x1024 reference is enough)"
        )
    return kind


def read_photos(uploads: list[UploadFile] | None, limits: ServerLimits) -> list[Photo]:
    """The uploaded photos, each checked: count, size, name, type by content, pixel count."""
    uploads = list(uploads or [])
    if not uploads:
        raise InputError("no photos: attach 1 or more PNG, JPEG or WebP files as `photos`")
    if len(uploads) > limits.max_photos:
        raise TooLarge(f"{len(uploads)} photos in one request: send at most {limits.max_photos}")
    photos, seen = [], set()
    for i, up in enumerate(uploads):
        name = _upload_name(up, "photo", i)
        if name.casefold() in seen:
            raise InputError(f"two photos are named '{printable(name, limit=80)}': give each file its own name")
        seen.add(name.casefold())
        n = _size(up)
        if n > limits.max_photo_bytes:
            raise TooLarge(
                f"photo '{printable(name, limit=80)}' is {n / MiB:.1f} MiB: send at most "
                f"{limits.max_photo_bytes / MiB:.0f} MiB per photo"
            )
        up.file.seek(0)
        data = up.file.read(limits.max_photo_bytes + 1)
        if len(data) > limits.max_photo_bytes:
            raise TooLarge(f"photo '{printable(name, limit=80)}' is over {limits.max_photo_bytes / MiB:.0f} MiB")
        photos.append(Photo(name, data, check_photo_bytes(data, name, limits)))
    return photos


@contextlib.contextmanager
def photo_files(photos: list[Photo]) -> Iterator[list[Path]]:
    """The photos as files in a private temp folder (0700, removed afterwards), named as uploaded: the engine's
    readers take paths, and the reference records keep the uploaded file names."""
    with tempfile.TemporaryDirectory(prefix="flx-upload-") as tmp:
        paths = []
        for i, p in enumerate(photos):
            d = Path(tmp) / str(i)
            d.mkdir()
            path = d / p.filename
            path.write_bytes(p.data)
            paths.append(path)
        yield paths


def read_flx_upload(upload: UploadFile | None, limits: ServerLimits) -> tuple[bytes, str]:
    """(bytes, name) of an uploaded `.flx` (the engine's reader verifies the content)."""
    if upload is None:
        raise InputError("no file: attach the .flx file as `file`")
    name = _upload_name(upload, ".flx", 0)
    n = _size(upload)
    if n > limits.max_flx_bytes:
        raise TooLarge(
            f"'{printable(name, limit=80)}' is {n / MiB:.0f} MiB: the limit is {limits.max_flx_bytes // MiB} MiB"
        )
    upload.file.seek(0)
    data = upload.file.read(limits.max_flx_bytes + 1)
    if len(data) > limits.max_flx_bytes:
        raise TooLarge(f"'{printable(name, limit=80)}' is over {limits.max_flx_bytes // MiB} MiB")
    return data, name


def parse_profile(text: str | None) -> dict | None:
    """A profile sent as YAML/JSON text -> a mapping (never a path: text from a request is not a file name)."""
    from engine._core.errors import ConfigError
    from engine._core.yaml_io import parse_document

    if text is None or not text.strip():
        return None
    data = parse_document(text, "profile")
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError("profile must be a mapping of fields (hair_colour: auburn, tags: [hero], ...)")
    return data


# ---------------------------------------------------------------------------------------------- job documents

PATH_KEYS = ("start_image", "end_image", "audio", "prior_dir")


def _inside(value: object, what: str, out_dir: Path) -> None:
    """A path from a job document sent over HTTP: relative, no `..`, and inside the batch's own folder (a job
    from the network reads only what earlier shots of its batch wrote, never the server's other files)."""
    if not isinstance(value, str):
        return
    check_text(value, what, max_len=4096, multiline=False)
    parts = value.split("/")
    if "\\" in value or "%" in value or value.startswith(("/", "~")) or any(p in ("", ".", "..") for p in parts):
        raise InputError(
            f"{what} {printable(value, limit=80)!r}: a job sent to the server names files relative to its own "
            "output folder (no absolute paths, '~', '..', '%' or backslashes)"
        )
    base = out_dir.resolve()
    if not (base / PurePosixPath(*parts)).resolve().is_relative_to(base):
        raise InputError(f"{what} {printable(value, limit=80)!r} leaves the batch's output folder")


def _check_values(values: dict, where: str, out_dir: Path, kind: str) -> None:
    preset = values.get("preset")
    if preset is not None:
        check_word(preset, f"{where}: preset")  # a bundled preset's name, never a YAML path on the server
    for key in PATH_KEYS:
        _inside(values.get(key), f"{where}: {key}", out_dir)
    if kind == "train" and values.get("source") not in (None, "pack", "refs"):
        _inside(values.get("source"), f"{where}: source", out_dir)
    if kind == "score":
        for item in values.get("media") or []:
            _inside(item, f"{where}: media", out_dir)
    if kind == "sequence":
        for j, seg in enumerate(values.get("shots") or []):
            if isinstance(seg, dict):
                _check_values(seg, f"{where}.shots[{j}]", out_dir, "segment")


def job_for_server(data: Any, outputs_root: Path, engine: Engine):
    """(JobFile, out_dir) of a job document sent over HTTP, checked like `flx batch run` checks a file.

    The document is validated by the job-file schema (`engine.jobs.specs.parse_job`: every shot's bounds), then
    held to the server's rules: characters are library names or ids, pinned to their ids here (a `.flx` path is
    refused: upload it first), presets are bundled names, `output` is one safe word, and every file path stays
    inside the batch's folder `<outputs>/batch/<output or name>` (also the folder relative paths are taken from). Last,
    `engine.jobs.checks.validate_job` asks this machine (presets, weights, input files)."""
    from engine._core.errors import ConfigError
    from engine.jobs.checks import validate_job
    from engine.jobs.specs import parse_job

    job = parse_job(data, source="job document")
    pinned = {}
    for alias, value in job.characters.items():
        if value.lower().endswith(".flx"):
            raise InputError(
                f"characters.{alias}: {printable(value, limit=80)!r} is a file path: jobs sent to the server use "
                "library characters (import the .flx first: POST /api/characters/import)"
            )
        pinned[alias] = engine.characters.summary(check_ref(value, f"characters.{alias}")).id
    if job.output is not None:
        check_word(job.output, "output")
    root = Path(outputs_root).resolve()
    out_dir = (root / "batch" / (job.output or job.name)).resolve()
    if not out_dir.is_relative_to(root):
        raise InputError("output: the batch folder must be inside the server's outputs folder")
    for kind, values in job.defaults.items():
        _check_values(values, f"defaults.{kind}", out_dir, kind)
    for shot in job.shots:
        _check_values(shot.params(), f"shot '{shot.id}'", out_dir, shot.kind)
    job = job.model_copy(update={"characters": pinned, "base_dir": str(out_dir)})
    problems = validate_job(engine, job)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError(f"job '{job.name}': " + "; ".join(problems[:3]) + more)
    return job, out_dir


__all__ = [
    "COOKIE",
    "Photo",
    "ServerLimits",
    "ServerState",
    "check_photo_bytes",
    "check_ref",
    "check_word",
    "image_kind",
    "job_for_server",
    "output_file",
    "parse_profile",
    "photo_files",
    "presented_token",
    "read_flx_upload",
    "read_photos",
    "require_token",
    "server_state",
]
