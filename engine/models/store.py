"""The weights store: component folders under the weights root plus a lock file.

Layout::

    <weights_root>/<component id>/...        files in the component's original layout
    <weights_root>/weights.lock.json         what was fetched/imported/generated, with sha256 + size

A component can also live outside the root (`flx weights import` of an existing Hub cache or
ComfyUI folder): its lock entry then records that `path`, and nothing is copied.

Verification: `verify()` re-hashes every file and compares with the lock. `require()` (called
before every load) is cheaper: it checks presence and size of every locked file and re-hashes
only files whose size or mtime changed since they were last hashed, so a multi-GB model is
not re-hashed on every run but any edit to a file is caught.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine._core.atomic import atomic_write_text
from engine._core.errors import ConfigError, ModelNotFound, WeightsIntegrityError
from engine._core.settings import EngineSettings

from .hashing import sha256_file
from .manifest import ComponentEntry, Manifest, load_manifest

LOCK_NAME = "weights.lock.json"


class LockedFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str
    size: int = Field(ge=0)
    mtime_ns: int = Field(default=0, description="mtime when last hashed; a change triggers a re-hash.")


class LockEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revision: str = Field(description="Resolved commit / URL / generated-seedN.")
    source: str = Field(description="Where the files came from (repo id, URL, builder or import path).")
    path: str | None = Field(default=None, description="Absolute folder when imported in place (not under the root).")
    recorded_at: str
    files: dict[str, LockedFile]


class LockFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lock_version: int = 1
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
    state: str  # "verified", "missing", "corrupt", "unlocked" (present but never hashed into the lock)
    folder: Path
    size_bytes: int = 0
    problems: list[FileProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state == "verified"


class WeightsStore:
    """Component folders + lock. Constructed from settings; no global state."""

    def __init__(self, settings: EngineSettings, manifest: Manifest | None = None):
        self.settings = settings
        self.root = Path(settings.weights_root)
        self.manifest = manifest or load_manifest(settings.manifest_path)

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
                f"{self.lock_path}: unreadable weights lock ({str(e).splitlines()[0]}): "
                "delete it and run `flx weights verify --relock` or re-fetch"
            ) from None

    def _write_lock(self, lock: LockFile) -> None:
        atomic_write_text(self.lock_path, lock.model_dump_json(indent=2) + "\n")

    # ----- locations -------------------------------------------------------------------------
    def component_dir(self, component_id: str) -> Path:
        """Folder holding the component's files (under the root unless imported in place)."""
        self.manifest.get(component_id)
        entry = self.read_lock().components.get(component_id)
        if entry is not None and entry.path:
            return Path(entry.path)
        return self.root / component_id

    def load_path(self, component_id: str) -> Path:
        """The loadable root inside the component folder (e.g. `models/image_encoder`)."""
        entry = self.manifest.get(component_id)
        return self.component_dir(component_id) / entry.root if entry.root else self.component_dir(component_id)

    @staticmethod
    def _matches(folder: Path, entry: ComponentEntry) -> tuple[list[str], list[str]]:
        return matched_files(folder, entry)

    # ----- recording -------------------------------------------------------------------------
    def record(
        self,
        component_id: str,
        revision: str,
        source: str | None = None,
        path: Path | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> LockEntry:
        """Hash the component's files into the lock (after a fetch, a generation or an import)."""
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
            st = p.stat()
            locked[rel] = LockedFile(sha256=sha256_file(p, progress), size=st.st_size, mtime_ns=st.st_mtime_ns)
        lock_entry = LockEntry(
            revision=revision,
            source=source or _describe_source(entry),
            path=str(folder.resolve()) if path else None,
            recorded_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            files=locked,
        )
        with self._file_lock():
            lock = self.read_lock()
            lock.components[component_id] = lock_entry
            self._write_lock(lock)
        return lock_entry

    # ----- status / verification -------------------------------------------------------------
    def status(
        self, component_id: str, *, full: bool = False, progress: Callable[[int], None] | None = None
    ) -> ComponentStatus:
        """Check one component. `full=True` re-hashes every file; else only changed files."""
        entry = self.manifest.get(component_id)
        lock_entry = self.read_lock().components.get(component_id)
        folder = Path(lock_entry.path) if lock_entry and lock_entry.path else self.root / component_id
        if lock_entry is None:
            files, missing = self._matches(folder, entry)
            state = "missing" if missing else "unlocked"
            size = sum((folder / f).stat().st_size for f in files)
            return ComponentStatus(entry, state, folder, size)
        problems: list[FileProblem] = []
        size = 0
        refreshed: dict[str, int] = {}
        for rel, lf in lock_entry.files.items():
            p = folder / rel
            if not p.is_file():
                problems.append(FileProblem(rel, "missing"))
                continue
            st = p.stat()
            size += st.st_size
            if st.st_size != lf.size:
                problems.append(FileProblem(rel, "size", str(lf.size), str(st.st_size)))
                continue
            if full or st.st_mtime_ns != lf.mtime_ns:
                digest = sha256_file(p, progress)
                if digest != lf.sha256:
                    problems.append(FileProblem(rel, "modified", lf.sha256, digest))
                else:
                    refreshed[rel] = st.st_mtime_ns
        if refreshed and not problems:
            self._refresh_mtimes(component_id, refreshed)
        if problems:
            state = "missing" if all(p.problem == "missing" for p in problems) else "corrupt"
        else:
            state = "verified"
        return ComponentStatus(entry, state, folder, size, problems)

    def _refresh_mtimes(self, component_id: str, mtimes: dict[str, int]) -> None:
        with self._file_lock():
            lock = self.read_lock()
            ent = lock.components.get(component_id)
            if ent is None:
                return
            for rel, m in mtimes.items():
                if rel in ent.files:
                    ent.files[rel].mtime_ns = m
            self._write_lock(lock)

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
        """Loadable path of a component that is present and matches its lock, else a clear error."""
        st = self.status(component_id)
        entry = st.entry
        if st.state == "missing":
            how = (
                "run `python scripts/make_tiny_weights.py`"
                if entry.is_generated
                else f"run `flx weights fetch {component_id}` (or `flx weights import PATH`)"
            )
            raise ModelNotFound(f"weights '{component_id}' are not in {st.folder}: {how}")
        if st.state == "unlocked":
            raise WeightsIntegrityError(
                f"weights '{component_id}' in {st.folder} have no lock entry, so they cannot be verified: "
                f"run `flx weights import {st.folder} --id {component_id}` to hash and register them"
            )
        if st.state == "corrupt" and not self.settings.allow_unverified_weights:
            p = st.problems[0]
            raise WeightsIntegrityError(
                f"weights '{component_id}' failed verification: {p.path} is {p.problem}"
                f"{' (expected sha256 ' + p.expected[:12] + '…, got ' + p.actual[:12] + '…)' if p.problem == 'modified' else ''}: "
                f"re-fetch with `flx weights fetch {component_id} --force`, or pass --allow-unverified to load anyway"
            )
        return self.load_path(component_id)

    def component_hashes(self, component_id: str) -> dict[str, str]:
        """{relative file: sha256} from the lock, for output metadata."""
        ent = self.read_lock().components.get(component_id)
        return {k: v.sha256 for k, v in ent.files.items()} if ent else {}

    def component_digest(self, component_id: str) -> str | None:
        """One sha256 over the sorted per-file hashes: a short identity for a whole component."""
        hashes = self.component_hashes(component_id)
        if not hashes:
            return None
        import hashlib

        h = hashlib.sha256()
        for rel in sorted(hashes):
            h.update(f"{rel}\0{hashes[rel]}\n".encode())
        return "sha256:" + h.hexdigest()


def matched_files(folder: Path, entry: ComponentEntry) -> tuple[list[str], list[str]]:
    """(files under `folder` matched by the entry's patterns, patterns with no match). Dot-files (partial
    downloads, caches) never count."""
    if not folder.is_dir():
        return [], list(entry.files)
    rels = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    matched: set[str] = set()
    missing: list[str] = []
    for pat in entry.files:
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


__all__ = ["WeightsStore", "ComponentStatus", "FileProblem", "LockFile", "LockEntry", "folder_size", "matched_files"]
