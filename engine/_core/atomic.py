"""Atomic file writes: write to a temp file in the same folder, fsync, then rename.

A crash or an exception never leaves a half-written image, video, `.flx` or lock file at the destination path:
either the old file (or nothing) is there, or the complete new one, and the rename is made durable by an fsync of
the folder. Rules every writer gets from here:

- Destinations must be regular files (or not exist yet). A symlink, device, FIFO or socket at the destination is
  refused: renaming over it would replace the link itself (exporting to `/dev/stdout` as root once replaced the
  system's symlink with a file), and following it lets a planted link redirect the write.
- Temp files are named `.<dest name>.<pid>-<random>.flx-tmp`: hidden, and never ending in a suffix a reader globs
  for (`*.flx`, `*.png`, `*.mp4`). Writers that choose a format by extension must name it (PIL `format=`, PyAV
  `format=`). Temps left by a killed process (its pid no longer runs) are removed by the next write to that folder.
- Permissions come from the process umask at `open()` (0666 minus the umask, like any new file), with no umask
  change: `os.umask` is process-wide, and flipping it races with other threads.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError

TEMP_SUFFIX = ".flx-tmp"
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{12}" + re.escape(TEMP_SUFFIX) + "$")


def ensure_writable_dir(
    path: str | os.PathLike,
    *,
    what: str = "output folder",
    fix: str = "choose a writable folder (e.g. --out ./outputs)",
) -> Path:
    """Create `path` if needed and check we can write there, with a clear error naming `what` it is if not."""
    p = Path(path)
    try:
        if p.exists() and not p.is_dir():
            raise OutputError(f"cannot use {what} '{p}': it is a file, not a folder: {fix}")
        p.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=p, prefix=".flx-probe-", suffix=TEMP_SUFFIX, delete=True)
        probe.close()
    except OSError as e:
        raise OutputError(f"cannot write to {what} '{p}': {e.strerror or e}: {fix}") from None
    return p


def check_destination(dest: Path) -> None:
    """Refuse a destination that exists and is not a regular file (see the module docstring)."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    except OSError as e:
        raise OutputError(f"cannot write '{dest}': {e.strerror or e}: choose another file path") from None
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"'{dest}' is a folder: give the path of a file to write (e.g. a name inside that folder)")
    if not stat.S_ISREG(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a device, pipe or socket"
        raise OutputError(
            f"'{dest}' is {kind}, not a regular file: FLX Engine only replaces regular files; "
            "write to a new file path instead"
        )


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (a stale temp's or lock's owner is gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(folder: Path) -> list[Path]:
    """Remove temp files of writers that died (their pid is gone) from `folder`. Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m and entry.is_file(follow_symlinks=False) and not pid_alive(int(m["pid"])):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder; the rename itself still happened
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; on success fsync it, rename it onto `dest` and fsync the folder;
    on any exception delete it and leave `dest` as it was."""
    dest = Path(dest)
    check_destination(dest)
    folder = ensure_writable_dir(dest.parent)
    clean_stale_temps(folder)
    tmp_path = folder / f".{dest.name}.{os.getpid()}-{secrets.token_hex(6)}{TEMP_SUFFIX}"
    try:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise OutputError(f"cannot write '{dest}': {e.strerror or e}: choose another file path") from None
    os.close(fd)
    try:
        yield tmp_path
        try:
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            check_destination(dest)  # nothing was planted there while we wrote
            os.replace(tmp_path, dest)
        except OSError as e:
            raise OutputError(f"cannot write '{dest}': {e.strerror or e}: choose another file path") from None
        _fsync_dir(folder)
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
