"""Atomic file writes: write to a temp file in the same folder, fsync, then rename.

A crash or an exception never leaves a half-written image, video, `.flx` or lock file at
the destination path: either the old file (or nothing) is there, or the complete new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and check we can write there, with a clear error if not."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=p, prefix=".flx-probe-", delete=True)
        probe.close()
    except OSError as e:
        raise OutputError(
            f"Cannot write to output folder '{p}': {e.strerror or e}. Choose a writable folder (e.g. --out ./outputs)."
        ) from None
    return p


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; on success rename it onto `dest`, else delete it.

    `suffix` defaults to the destination's suffix so writers that pick a format from the
    extension (PIL, PyAV) still work.
    """
    dest = Path(dest)
    if dest.is_dir():
        raise OutputError(f"'{dest}' is a folder: give the path of a file to write (e.g. a name inside that folder)")
    ensure_writable_dir(dest.parent)
    fd, tmp = tempfile.mkstemp(
        dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix or dest.suffix + ".part" + dest.suffix
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        try:
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            # mkstemp creates 0600 files; give outputs the usual permissions (0666 minus the umask).
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
            os.replace(tmp_path, dest)
        except OSError as e:
            raise OutputError(f"cannot write '{dest}': {e.strerror or e}: choose another file path") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def atomic_write_text(dest: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(dest, text.encode("utf-8"))
