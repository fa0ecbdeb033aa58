"""The weights store: component folders under the weights root plus a lock file.

Layout::

    <weights_root>/<component id>/...        files in the component's original layout
    <weights_root>/weights.lock.json         what was fetched/imported/generated: sha256, size and stat per file
    <weights_root>/.views/<id>/<key>/...     load folders: symlinks to the locked files only

A component can also live outside the root (`flx weights import` of an existing Hub cache or
ComfyUI folder): its lock entry then records that `path`, and nothing is copied.

Verification (docs/weights.md says what is checked when):

- `verify()` re-hashes every locked file and records the outcome in the lock; a failed verify is
  remembered, so `require()` refuses the component until a verify passes or it is recorded again.
- `require()` (called before every load) re-hashes every locked file whose size, mtime, ctime,
  inode or device changed since it was hashed (`verify_on_load="stat"`), or every file
  (`verify_on_load="full"`). The ctime cannot be set back from user space, so an edit whose
  mtime was restored is still re-hashed.
- `require()` returns a *view*: a folder holding only symlinks to the locked files, in their
  layout. Loaders (diffusers, transformers, onnxruntime) open that folder, so files the lock does
  not list (an extra `*.index.json` and shard, the rest of a Hub snapshot) are never read.
- A component whose manifest entry has a `convert` step (a publisher's torch pickle, e.g. Stand-In's `.ckpt`)
  locks and serves only the converted safetensors (`ComponentEntry.locked_files`); `converted_from` keeps the
  pickle's sha256. The conversion itself runs in `fetch.convert_component` after a fetch, import or generation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat as stat_mod
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine._core.atomic import atomic_write_text
from engine._core.errors import (
    ConfigError,
    LicenseRefused,
    ModelNotFound,
    OutputError,
    UnverifiedWeightsWarning,
    WeightsIntegrityError,
)
from engine._core.settings import EngineSettings

from .hashing import sha256_file
from .manifest import ComponentEntry, Manifest, load_manifest

LOCK_NAME = "weights.lock.json"
LOCK_VERSION = 2
VIEWS_DIR = ".views"


class LockedFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str
    size: int = Field(ge=0)
    # The stat when the file was last hashed: any change triggers a re-hash before the next load. Zero (a
    # version-1 lock) never matches, so such files are re-hashed once and then recorded.
    mtime_ns: int = 0
    ctime_ns: int = 0
    inode: int = 0
    device: int = 0
    published: Literal["sha256", "git-sha1"] | None = Field(
        default=None, description="Matched the hash the Hub publishes for it when fetched (LFS sha256 or git blob)."
    )


class Verification(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: Literal["ok", "failed"]
    at: str
    detail: str = ""


class LockEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revision: str = Field(description="Resolved commit / URL / generated-seedN.")
    source: str = Field(description="Where the files came from (repo id, URL, builder or import path).")
    path: str | None = Field(default=None, description="Absolute folder when imported in place (not under the root).")
    recorded_at: str
    files: dict[str, LockedFile]
    verification: Verification | None = Field(
        default=None, description="Outcome of the last full verify (or of the recording); None in version-1 locks."
    )
    converted_from: dict[str, str] | None = Field(
        default=None,
        description="sha256 of the publisher file(s) the locked files were converted from (manifest `convert`).",
    )


class LockFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lock_version: int = LOCK_VERSION
    components: dict[str, LockEntry] = Field(default_factory=dict)


@dataclass
class FileProblem:
    path: str
    problem: str  # "modified", "missing", "size"
    expected: str = ""
    actual: str = ""


@dataclass
class ComponentStatus:
    entry: ComponentEntry
    # "verified"; "missing"; "corrupt" (a file differs from the lock now); "failed" (the last full verify failed
    # and none has passed since); "unlocked" (present but never hashed into the lock)
    state: str
    folder: Path
    size_bytes: int = 0
    problems: list[FileProblem] = field(default_factory=list)
    lock: LockEntry | None = None
    hashes: dict[str, str] = field(default_factory=dict)  # sha256 of each present locked file, as checked now

    @property
    def ok(self) -> bool:
        return self.state == "verified"


def fix_hint(entry: ComponentEntry, lock_entry: LockEntry | None = None) -> str:
    """The command that puts good files back, per kind of component (used by every message that suggests a fix)."""
    if entry.is_generated:
        return f"rebuild it with `python scripts/make_tiny_weights.py --force --only {entry.id}`"
    if lock_entry is not None and lock_entry.path:
        return (
            f"re-import a good copy with `flx weights import PATH --id {entry.id}` "
            f"or re-fetch it with `flx weights fetch {entry.id} --force`"
        )
    return f"re-fetch it with `flx weights fetch {entry.id} --force`"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _stat_fields(st: os.stat_result) -> dict[str, int]:
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
        "device": st.st_dev,
    }


def _same_stat(lf: LockedFile, st: os.stat_result) -> bool:
    return (lf.size, lf.mtime_ns, lf.ctime_ns, lf.inode, lf.device) == tuple(_stat_fields(st).values())


def _same_entry(a: LockEntry, b: LockEntry) -> bool:
    """Whether two reads of a lock entry describe the same recording (so stat refreshes may be applied)."""
    return (a.recorded_at, a.revision, a.path, {k: v.sha256 for k, v in a.files.items()}) == (
        b.recorded_at,
        b.revision,
        b.path,
        {k: v.sha256 for k, v in b.files.items()},
    )


def digest_of(hashes: dict[str, str]) -> str | None:
    """One sha256 over sorted {path: sha256}: a short identity for a whole component."""
    if not hashes:
        return None
    h = hashlib.sha256()
    for rel in sorted(hashes):
        h.update(f"{rel}\0{hashes[rel]}\n".encode())
    return "sha256:" + h.hexdigest()


class WeightsStore:
    """Component folders + lock. Constructed from settings; no global state."""

    def __init__(self, settings: EngineSettings, manifest: Manifest | None = None):
        self.settings = settings
        self.root = Path(settings.weights_root)
        self.manifest = manifest or load_manifest(settings.manifest_path)
        self._unverified: dict[str, dict[str, str]] = {}  # component id -> hashes of the files loaded unverified

    # ----- lock file -------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_NAME

    def _file_lock(self) -> FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.lock_path) + ".flock")

    def read_lock(self) -> LockFile:
        if not self.lock_path.exists():
            return LockFile()
        try:
            return LockFile.model_validate_json(self.lock_path.read_text(encoding="utf-8"))
        except (ValidationError, ValueError) as e:
            raise ConfigError(
                f"{self.lock_path}: unreadable weights lock ({str(e).splitlines()[0]}): move it aside, then "
                "re-fetch each component (`flx weights fetch ID --force`) or re-hash it in place "
                f"(`flx weights import {self.root / 'ID'} --id ID`); tiny twins: "
                "`python scripts/make_tiny_weights.py --force`"
            ) from None

    def _update_lock(self, change: Callable[[LockFile], bool], *, best_effort: bool = False) -> None:
        """Apply `change` to the lock under the file lock and write it atomically when it returns True.

        `best_effort` updates (stat refreshes, verification outcomes seen by a load) are skipped on a read-only
        weights root: they only save work or re-state what the next check finds again.
        """
        try:
            with self._file_lock():
                lock = self.read_lock()
                if change(lock):
                    lock.lock_version = LOCK_VERSION
                    atomic_write_text(self.lock_path, lock.model_dump_json(indent=2) + "\n")
        except (OSError, OutputError) as e:
            if best_effort:
                return
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise OutputError(
                f"cannot write the weights lock {self.lock_path} ({why}): make {self.root} writable, or choose "
                "another weights root with --weights-dir / FLX_WEIGHTS_DIR"
            ) from None

    # ----- locations -------------------------------------------------------------------------
    def component_dir(self, component_id: str) -> Path:
        """Folder holding the component's files (under the root unless imported in place). Load from
        `require()`, never from here: this folder may hold files the lock does not list."""
        self.manifest.get(component_id)
        return self._folder(component_id, self.read_lock().components.get(component_id))

    def _folder(self, component_id: str, lock_entry: LockEntry | None) -> Path:
        return Path(lock_entry.path) if lock_entry is not None and lock_entry.path else self.root / component_id

    @staticmethod
    def _matches(folder: Path, entry: ComponentEntry) -> tuple[list[str], list[str]]:
        return matched_files(folder, entry)

    # ----- recording -------------------------------------------------------------------------
    def hash_entry(
        self,
        component_id: str,
        revision: str,
        source: str | None = None,
        path: Path | None = None,
        progress: Callable[[int], None] | None = None,
        converted_from: dict[str, str] | None = None,
    ) -> LockEntry:
        """Hash the component's files into a lock entry without writing it (see `commit`). A component with a
        `convert` step is hashed after it (its converted file, not the publisher's), `converted_from` recording
        the sha256 of what it was converted from."""
        entry = self.manifest.get(component_id)
        folder = Path(path) if path else self.root / component_id
        files, missing = self._matches(folder, entry)
        if missing:
            raise ModelNotFound(
                f"component '{component_id}' in {folder} lacks {', '.join(missing)}: fetch it again "
                f"(`flx weights fetch {component_id}`) or point `flx weights import` at the complete folder"
            )
        locked = {}
        for rel in files:
            p = folder / rel
            st = p.stat()  # taken before hashing: a write during hashing changes the ctime, so it is re-checked
            locked[rel] = LockedFile(sha256=sha256_file(p, progress), **_stat_fields(st))
        return LockEntry(
            revision=revision,
            source=source or _describe_source(entry),
            path=str(folder.resolve()) if path else None,
            recorded_at=_now(),
            files=locked,
            verification=Verification(state="ok", at=_now(), detail="hashed when recorded"),
            converted_from=converted_from,
        )

    def commit(self, component_id: str, lock_entry: LockEntry) -> LockEntry:
        """Write a lock entry made by `hash_entry` (replacing any earlier one, and its failed state)."""
        self.manifest.get(component_id)

        def put(lock: LockFile) -> bool:
            lock.components[component_id] = lock_entry
            return True

        self._update_lock(put)
        self._unverified.pop(component_id, None)
        return lock_entry

    def record(
        self,
        component_id: str,
        revision: str,
        source: str | None = None,
        path: Path | None = None,
        progress: Callable[[int], None] | None = None,
        converted_from: dict[str, str] | None = None,
    ) -> LockEntry:
        """Hash the component's files into the lock (after a fetch, a generation or an import)."""
        return self.commit(
            component_id, self.hash_entry(component_id, revision, source, path, progress, converted_from)
        )

    # ----- status / verification -------------------------------------------------------------
    def status(
        self, component_id: str, *, full: bool = False, progress: Callable[[int], None] | None = None
    ) -> ComponentStatus:
        """Check one component. `full=True` re-hashes every file and records the outcome in the lock; else only
        files whose stat changed since they were hashed are re-hashed."""
        entry = self.manifest.get(component_id)
        lock_entry = self.read_lock().components.get(component_id)
        folder = self._folder(component_id, lock_entry)
        if lock_entry is None:
            files, missing = self._matches(folder, entry)
            size = sum((folder / f).stat().st_size for f in files)
            if missing:
                return ComponentStatus(entry, "missing", folder, size, [FileProblem(m, "missing") for m in missing])
            return ComponentStatus(entry, "unlocked", folder, size)
        problems: list[FileProblem] = []
        hashes: dict[str, str] = {}
        refreshed: dict[str, LockedFile] = {}
        size = 0
        for rel, lf in lock_entry.files.items():
            p = folder / rel
            try:
                st = p.stat()
            except OSError:
                st = None
            if st is None or not stat_mod.S_ISREG(st.st_mode):
                problems.append(FileProblem(rel, "missing"))
                continue
            size += st.st_size
            if st.st_size != lf.size:
                problems.append(FileProblem(rel, "size", str(lf.size), str(st.st_size)))
                if full:  # what an unverified load would read
                    hashes[rel] = sha256_file(p, progress)
                continue
            if full or not _same_stat(lf, st):
                digest = sha256_file(p, progress)
                hashes[rel] = digest
                if digest != lf.sha256:
                    problems.append(FileProblem(rel, "modified", lf.sha256, digest))
                elif not _same_stat(lf, st):
                    refreshed[rel] = lf.model_copy(update=_stat_fields(st))
            else:
                hashes[rel] = lf.sha256
        content_bad = [p for p in problems if p.problem != "missing"]
        before = lock_entry.verification
        if problems:
            state = "corrupt" if content_bad else "missing"
        elif before is not None and before.state == "failed" and not full:
            state = "failed"
        else:
            state = "verified"
        outcome = None
        if content_bad and (full or before is None or before.state != "failed"):
            p = content_bad[0]
            outcome = Verification(state="failed", at=_now(), detail=f"{p.path} is {p.problem}")
        elif full and not problems:
            outcome = Verification(state="ok", at=_now(), detail="full re-hash")
        if refreshed or outcome:
            self._save_check(component_id, lock_entry, refreshed, outcome)
        return ComponentStatus(entry, state, folder, size, problems, lock_entry, hashes)

    def _save_check(
        self, component_id: str, seen: LockEntry, refreshed: dict[str, LockedFile], outcome: Verification | None
    ) -> None:
        """Record new stats of re-hashed files and the verification outcome, unless the entry was re-recorded
        meanwhile. Best-effort: on a read-only weights root nothing is remembered, and each check starts over."""

        def apply(lock: LockFile) -> bool:
            cur = lock.components.get(component_id)
            if cur is None or not _same_entry(cur, seen):
                return False
            for rel, lf in refreshed.items():
                cur.files[rel] = lf
            if outcome is not None:
                cur.verification = outcome
            return True

        self._update_lock(apply, best_effort=True)

    def verify(
        self, component_ids: list[str] | None = None, progress: Callable[[int], None] | None = None
    ) -> list[ComponentStatus]:
        """Full re-hash of the given (default: all locked) components; `progress(nbytes)` as bytes are hashed."""
        ids = component_ids or list(self.read_lock().components)
        return [self.status(i, full=True, progress=progress) for i in ids]

    def locked_bytes(self, component_ids: list[str] | None = None) -> int:
        """Total size of the locked files of these components (for progress bars)."""
        lock = self.read_lock().components
        return sum(f.size for cid in (component_ids or list(lock)) if cid in lock for f in lock[cid].files.values())

    def require(self, component_id: str) -> Path:
        """Loadable folder of a component whose locked files all match the lock, else a clear error.

        The folder is a view holding only the locked files (see `_view`); under `allow_unverified_weights` a
        component that fails is loaded with a `UnverifiedWeightsWarning`, and `unverified_hashes` then gives
        the hashes of the files actually loaded.
        """
        entry = self.manifest.get(component_id)
        if self.settings.commercial_use and not entry.license.commercial_use:
            raise LicenseRefused(
                f"component '{component_id}' is licensed '{entry.license.name}', which excludes commercial use, "
                "and commercial use is on (FLX_COMMERCIAL_USE / --commercial): choose a preset or encoder "
                "without it, or turn commercial use off for non-commercial work"
            )
        st = self.status(component_id, full=self.settings.verify_on_load == "full")
        if st.state == "missing":
            how = (
                f"run `python scripts/make_tiny_weights.py --only {component_id}`"
                if entry.is_generated
                else f"run `flx weights fetch {component_id}` (or `flx weights import PATH`)"
            )
            if st.lock is None:
                raise ModelNotFound(f"weights '{component_id}' are not in {st.folder}: {how}")
            raise ModelNotFound(f"weights '{component_id}' in {st.folder} lack {st.problems[0].path}: {how}")
        if st.state == "unlocked":
            fix = (
                fix_hint(entry)
                if entry.is_generated
                else f"run `flx weights import {st.folder} --id {component_id}` to hash and register them"
            )
            raise WeightsIntegrityError(
                f"weights '{component_id}' in {st.folder} have no lock entry, so they cannot be verified: {fix}"
            )
        if st.state in ("corrupt", "failed"):
            if not self.settings.allow_unverified_weights:
                raise WeightsIntegrityError(self._refusal(st))
            checked = st if self.settings.verify_on_load == "full" else self.status(component_id, full=True)
            if checked.ok:  # the files are good again: that full re-hash is a verify that passed
                st = checked
            else:
                warnings.warn(
                    f"loading weights '{component_id}' UNVERIFIED (--allow-unverified): {self._problem_text(checked)}; "
                    "outputs record `unverified: true` and the hashes of the files loaded",
                    UnverifiedWeightsWarning,
                    stacklevel=2,
                )
                self._unverified[component_id] = dict(checked.hashes)
                st = checked
        if st.ok:
            self._unverified.pop(component_id, None)
        present = [rel for rel in st.lock.files if rel in st.hashes]
        view = self._view(component_id, st.folder, st.lock, present)
        return view / entry.root if entry.root else view

    def _problem_text(self, st: ComponentStatus) -> str:
        if st.problems:
            p = st.problems[0]
            extra = (
                f" (expected sha256 {p.expected[:12]}…, got {p.actual[:12]}…)"
                if p.problem == "modified"
                else (f" (expected {p.expected} bytes, got {p.actual})" if p.problem == "size" else "")
            )
            return f"{p.path} is {p.problem}{extra}"
        ver = st.lock.verification if st.lock else None
        return f"a full re-hash at {ver.at if ver else '?'} found {ver.detail if ver else 'a mismatch'}"

    def _refusal(self, st: ComponentStatus) -> str:
        cid = st.entry.id
        again = f"; if the files were repaired, `flx weights verify {cid}` clears it" if st.state == "failed" else ""
        return (
            f"weights '{cid}' failed verification: {self._problem_text(st)}: {fix_hint(st.entry, st.lock)}{again}, "
            "or pass --allow-unverified to load anyway"
        )

    def unverified_hashes(self, component_id: str) -> dict[str, str] | None:
        """{file: sha256 as read} when this store last loaded the component unverified, else None."""
        hashes = self._unverified.get(component_id)
        return dict(hashes) if hashes is not None else None

    def component_hashes(self, component_id: str) -> dict[str, str]:
        """{relative file: sha256} from the lock, for output metadata."""
        ent = self.read_lock().components.get(component_id)
        return {k: v.sha256 for k, v in ent.files.items()} if ent else {}

    def component_digest(self, component_id: str) -> str | None:
        """One sha256 over the sorted per-file hashes of the lock: a short identity for a whole component."""
        return digest_of(self.component_hashes(component_id))

    # ----- load views ------------------------------------------------------------------------
    def _view_bases(self) -> list[Path]:
        """Where views may live: a dot-folder of the root, else (read-only root) a cache under the engine home."""
        root_key = hashlib.sha256(str(self.root.absolute()).encode()).hexdigest()[:12]
        return [self.root / VIEWS_DIR, Path(self.settings.home) / "cache" / "weights-views" / root_key]

    def _view(self, component_id: str, folder: Path, lock_entry: LockEntry, files: list[str]) -> Path:
        """A folder holding exactly one symlink per locked file (same relative layout), so a loader that lists
        the folder (diffusers picks `*.index.json` shards and variants that way) can only see locked bytes.

        Its name is keyed by the source folder and the lock entry, so it is rebuilt when either changes; it is
        re-checked on every call and rebuilt if anything was added, removed or re-pointed inside it.
        """
        folder = Path(folder).absolute()
        targets = {rel: str(folder / rel) for rel in sorted(files)}
        key_src = json.dumps([component_id, targets, {r: lock_entry.files[r].sha256 for r in targets}])
        key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
        candidates = [base / component_id / key for base in self._view_bases()]
        for view in candidates:
            if _view_matches(view, targets):
                return view
        errors = []
        for view in candidates:
            try:
                _build_view(view, targets)
            except OSError as e:
                errors.append(f"{view.parent.parent}: {e.strerror or e}")
                continue
            _prune_views(view)
            return view
        raise OutputError(
            f"cannot create the load folder of '{component_id}' ({'; '.join(errors)}): make the weights root "
            f"or {Path(self.settings.home) / 'cache'} writable"
        )


def _view_matches(view: Path, targets: dict[str, str]) -> bool:
    """True when `view` holds exactly the expected symlinks (and their folders), nothing else."""
    if view.is_symlink() or not view.is_dir():
        return False
    dirs = {p for rel in targets for p in (Path(rel).parents) if str(p) != "."}
    dirs = {p.as_posix() for p in dirs}
    seen: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(view):  # does not follow symlinked folders
        base = Path(dirpath).relative_to(view)
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)) or (base / d).as_posix() not in dirs:
                return False
        for f in filenames:
            full = os.path.join(dirpath, f)
            if not os.path.islink(full):
                return False
            seen[(base / f).as_posix()] = os.readlink(full)
    return seen == targets


def _build_view(view: Path, targets: dict[str, str]) -> None:
    """Write the symlinks into a hidden temp folder beside `view`, then rename it into place."""
    view.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{view.name}.", suffix=".building", dir=view.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the view is an ordinary folder
        for rel, target in targets.items():
            link = tmp / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, link)
        if view.exists() or view.is_symlink():  # a view someone changed: move it out of the way
            old = view.with_name(f".{view.name}.old-{time.time_ns()}")
            os.rename(view, old)
            _remove(old)
        try:
            os.rename(tmp, view)
        except OSError:
            if not _view_matches(view, targets):  # else a concurrent load built the same view first
                raise
            _remove(tmp)
    except BaseException:
        _remove(tmp)
        raise


def _prune_views(current: Path) -> None:
    """Remove the component's other views (from older lock entries); best-effort."""
    with contextlib.suppress(OSError):
        for p in current.parent.iterdir():
            if p != current and (not p.name.startswith(".") or ".old-" in p.name):
                _remove(p)


def _remove(p: Path) -> None:
    with contextlib.suppress(OSError):
        if p.is_symlink() or p.is_file():
            p.unlink()
        else:
            shutil.rmtree(p, ignore_errors=True)


def matched_files(
    folder: Path, entry: ComponentEntry, patterns: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """(files under `folder` matched by the entry's locked patterns, or `patterns`, and the patterns with no
    match). Dot-files (partial downloads, caches) never count."""
    import fnmatch

    patterns = entry.locked_files if patterns is None else patterns
    if not folder.is_dir():
        return [], list(patterns)
    rels = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    matched: set[str] = set()
    missing: list[str] = []
    for pat in patterns:
        hits = [r for r in rels if fnmatch.fnmatchcase(r, pat)]
        if not hits:
            missing.append(pat)
        matched.update(hits)
    return sorted(matched), missing


def _describe_source(entry: ComponentEntry) -> str:
    s = entry.source
    if s.type == "hub":
        return f"hub:{s.repo_id}@{s.revision}"
    if s.type == "url":
        return s.url
    return f"generated:{s.builder}"


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).is_dir() else 0


__all__ = [
    "WeightsStore",
    "ComponentStatus",
    "FileProblem",
    "LockFile",
    "LockEntry",
    "LockedFile",
    "Verification",
    "digest_of",
    "fix_hint",
    "folder_size",
    "matched_files",
]
