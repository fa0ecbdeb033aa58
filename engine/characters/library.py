"""The character library: one SQLite file (WAL) holding every character and every version of it.

Each version is stored as its canonical `.flx` bytes (the same bytes `export` writes, crops included). One
serialiser for disk, library and exchange means export is a copy, an import re-checks exactly what a file
would, and a stored version is verified (sha256) every time it is read back. A few columns beside the blob
(name, tags, times, archived) exist only so `list`/`search` need not open the blobs.

Every write is one transaction (`BEGIN IMMEDIATE`): a failed import, rename or archive leaves nothing behind.
Readers never take the write lock (WAL; the schema is migrated only when it is older than this engine's), so
`list` answers while another process imports. A library that cannot be written (read-only file or folder) opens
read-only: reading works, a write says so in one line.

Names collide on `name_key` (NFKC + case folding, `engine._core.text.name_key`), the same rule for create, import,
rename and variants; SQLite's own NOCASE folds ASCII only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

from engine._core.atomic import atomic_write_bytes, ensure_writable_dir
from engine._core.errors import CharacterFileError, CharacterNotFound, ConfigError, InputError, OutputError
from engine._core.settings import MAX_ARCHIVE_DAYS
from engine._core.text import name_key, printable

from .flx_format import from_bytes, read_flx, to_bytes
from .schema import Character, parse_time, utc_now, validate_name

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: name_key (Unicode case-insensitive names)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS characters (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    last_used TEXT,
    archived INTEGER NOT NULL DEFAULT 0,
    archived_at TEXT,
    latest_version INTEGER NOT NULL,
    tags TEXT NOT NULL DEFAULT '[]',
    variant TEXT,
    parent_id TEXT,
    encoders TEXT NOT NULL DEFAULT '[]',
    name_key TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS characters_active_key ON characters (name_key) WHERE archived = 0;
CREATE TABLE IF NOT EXISTS versions (
    character_id TEXT NOT NULL REFERENCES characters (id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    updated TEXT NOT NULL,
    change TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    flx BLOB NOT NULL,
    PRIMARY KEY (character_id, version)
);
"""


@dataclass(frozen=True)
class CharacterSummary:
    """One row of `list`: enough to choose a character without loading it."""

    id: str
    name: str
    latest_version: int
    created: str
    updated: str
    last_used: str | None
    archived: bool
    tags: list[str]
    variant: str | None
    parent_id: str | None
    encoders: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VersionInfo:
    """One entry of `log`."""

    version: int
    name: str
    updated: str
    change: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ImportResult:
    id: str
    name: str
    version: int
    status: str  # "added" (new character), "new-version", "unchanged"
    source: str


def _iso(now: datetime | str | None) -> str:
    if now is None:
        return utc_now()
    if isinstance(now, str):
        parse_time(now)
        return now
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _writable(path: Path) -> bool:
    """Can this process change the library file (and create its -wal/-shm beside it)?"""
    if not path.exists():
        return True
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def slug(name: str) -> str:
    """A file-name-safe form of a character name."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")
    return s[:60] or "character"


class CharacterLibrary:
    """Characters in a SQLite file. Construct with the path (usually `settings.library_file`).

    One instance holds one connection: use it from one thread (open one per request/worker; opening is cheap).
    Several processes may share the file (WAL, `BEGIN IMMEDIATE`, 10 s busy timeout).

    Examples:
        ```py
        >>> lib = CharacterLibrary(settings.library_file)
        >>> lib.add(character)
        >>> lib.get("ava").version
        1
        ```
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            raise ConfigError(f"character library {self.path} is not a file: set FLX_LIBRARY_PATH or --home elsewhere")
        if not self.path.exists():
            ensure_writable_dir(
                self.path.parent, what="engine home folder", fix="choose another with --home or FLX_HOME"
            )
        self.readonly = not _writable(self.path)
        try:
            self._db = self._connect()
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise ConfigError(
                f"character library {self.path} cannot be opened ({e}): move it away or set FLX_LIBRARY_PATH"
            ) from None

    def _connect(self) -> sqlite3.Connection:
        if not self.readonly:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")  # once per file: WAL is persistent
            return db
        # Read-only: a WAL file needs its -shm; when the folder is read-only too, only `immutable` can read it
        # (nobody can be writing to a file nobody can write).
        uri = self.path.resolve().as_uri()
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None, timeout=10.0)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            db.close()
            db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)
        return db

    # ------------------------------------------------------------------------------------------ plumbing

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _schema_version(self) -> int | None:
        has_meta = self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else None

    def _migrate(self) -> None:
        """Create or upgrade the schema, taking the write lock only when there is something to do."""
        version = self._schema_version()
        if version == SCHEMA_VERSION:
            return
        if version is not None and version > SCHEMA_VERSION:
            raise ConfigError(
                f"character library {self.path} has schema {version} (newer than this engine's {SCHEMA_VERSION}): "
                "upgrade FLX Engine"
            )
        if self.readonly:
            raise ConfigError(
                f"character library {self.path} is read-only and needs "
                f"{'creating' if version is None else f'upgrading from schema {version}'}: make it writable once"
            )
        with self._tx():
            version = self._schema_version()  # another process may have migrated while we waited
            if version == SCHEMA_VERSION:
                return
            if version == 1:
                self._db.execute("ALTER TABLE characters ADD COLUMN name_key TEXT NOT NULL DEFAULT ''")
                self._db.execute("DROP INDEX IF EXISTS characters_active_name")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip() and "characters_active_key" not in stmt:
                    self._db.execute(stmt)
            self._fill_name_keys()
            self._db.execute(
                "CREATE UNIQUE INDEX IF NOT EXISTS characters_active_key ON characters (name_key) WHERE archived = 0"
            )
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _fill_name_keys(self) -> None:
        """Schema 1 -> 2: compute every name key; active names that only the new rule finds equal keep a
        disambiguated key (and a log line), so no character is lost in the upgrade."""
        seen: set[str] = set()
        for row in self._db.execute("SELECT id, name, archived FROM characters ORDER BY created, id").fetchall():
            key = name_key(row["name"] if isinstance(row, sqlite3.Row) else row[1])
            cid, archived = row[0], row[2]
            if not archived and key in seen:
                logger.warning(
                    "character library: names equal up to case: '%s' kept under id %s", printable(row[1]), cid
                )
                key = f"{key}\x1f{cid}"
            if not archived:
                seen.add(key)
            self._db.execute("UPDATE characters SET name_key=? WHERE id=?", (key, cid))

    class _Tx:
        def __init__(self, lib: CharacterLibrary):
            self.lib = lib
            self.db = lib._db

        def __enter__(self):
            if self.lib.readonly:
                raise OutputError(
                    f"character library {self.lib.path} is read-only: make it (and its folder) writable, "
                    "or point --home / FLX_LIBRARY_PATH at a writable copy"
                )
            try:
                self.db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if "locked" in str(e) or "busy" in str(e):
                    raise OutputError(
                        f"character library {self.lib.path} is busy: another process has been writing to it for "
                        "over 10 s; try again when it has finished"
                    ) from None
                raise
            return self.db

        def __exit__(self, exc_type, exc, tb):
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            return False

    def _tx(self) -> _Tx:
        return self._Tx(self)

    def _row(self, name_or_id: str, *, include_archived: bool = True) -> sqlite3.Row:
        key = (name_or_id or "").strip()
        try:
            cid = str(uuid.UUID(key))
            row = self._db.execute("SELECT * FROM characters WHERE id=?", (cid,)).fetchone()
            if row:
                return row
        except ValueError:
            pass
        row = self._db.execute("SELECT * FROM characters WHERE name_key=? AND archived=0", (name_key(key),)).fetchone()
        if row:
            return row
        if re.fullmatch(r"[0-9a-f-]{6,36}", key):  # a unique id prefix, as `list` shows
            rows = self._db.execute("SELECT * FROM characters WHERE id LIKE ?", (key + "%",)).fetchall()
            if len(rows) == 1:
                return rows[0]
        archived = self._db.execute(
            "SELECT id FROM characters WHERE name_key=? AND archived=1", (name_key(key),)
        ).fetchone()
        hint = (
            f"it was archived (id {archived['id']}): import its .flx from the archive folder to restore it"
            if archived
            else "see `flx character list`"
        )
        raise CharacterNotFound(f"no character named or with id '{printable(key, limit=100)}' in the library: {hint}")

    @staticmethod
    def _summary(row: sqlite3.Row) -> CharacterSummary:
        return CharacterSummary(
            id=row["id"],
            name=row["name"],
            latest_version=row["latest_version"],
            created=row["created"],
            updated=row["updated"],
            last_used=row["last_used"],
            archived=bool(row["archived"]),
            tags=json.loads(row["tags"]),
            variant=row["variant"],
            parent_id=row["parent_id"],
            encoders=json.loads(row["encoders"]),
        )

    def check_name_free(self, name: str, own_id: str = "") -> None:
        """Raise `InputError` when an active character other than `own_id` has a name equal to `name` (`name_key`)."""
        clash = self._db.execute(
            "SELECT id, name FROM characters WHERE name_key=? AND archived=0 AND id<>?", (name_key(name), own_id)
        ).fetchone()
        if clash:
            raise InputError(
                f"a character named '{printable(clash[1])}' already exists (id {clash[0]}): names differing only in "
                "case are the same name; choose another name or rename that one"
            )

    _check_name_free = check_name_free

    def _write_version(self, ch: Character) -> None:
        blob = to_bytes(ch)
        limit = self._db.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        if len(blob) >= limit:
            raise InputError(
                f"character '{printable(ch.name)}' is {len(blob)} bytes as a .flx, over this SQLite build's blob limit "
                f"({limit}): store a smaller LoRA or fewer reference crops"
            )
        self._db.execute(
            "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?)",
            (ch.id, ch.version, ch.name, ch.updated, ch.change, hashlib.sha256(blob).hexdigest(), len(blob), blob),
        )

    def _upsert_head(self, ch: Character, *, created: bool, archived: bool = False) -> None:
        cols = (ch.name, name_key(ch.name), ch.updated, ch.version, json.dumps(ch.profile.tags), ch.variant,
                ch.parent.character_id if ch.parent else None, json.dumps(sorted(ch.embeddings)))  # fmt: skip
        if created:
            self._db.execute(
                "INSERT INTO characters (name, name_key, updated, latest_version, tags, variant, parent_id, encoders, "
                "id, created, last_used, archived) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (*cols, ch.id, ch.created, ch.updated, int(archived)),
            )
        else:
            self._db.execute(
                "UPDATE characters SET name=?, name_key=?, updated=?, latest_version=?, tags=?, variant=?, "
                "parent_id=?, encoders=? WHERE id=?",
                (*cols, ch.id),
            )

    # ------------------------------------------------------------------------------------------ reading

    def get(self, name_or_id: str, version: int | None = None) -> Character:
        """A character (latest version, or `version`) by name (active ones) or id, with blobs attached."""
        row = self._row(name_or_id)
        v = row["latest_version"] if version is None else int(version)
        blob = self._db.execute(
            "SELECT flx FROM versions WHERE character_id=? AND version=?", (row["id"], v)
        ).fetchone()
        if blob is None:
            raise CharacterNotFound(
                f"character '{row['name']}' has no version {v} (latest is {row['latest_version']}): "
                f"see `flx character log {row['name']}`"
            )
        return from_bytes(bytes(blob[0]), source=f"library entry {row['name']} v{v}").character

    def head(self, name_or_id: str) -> tuple[str, int, str]:
        """(id, latest version, that version's sha256) without reading the version itself: lets a warm caller
        keep parsed characters and know when one changed."""
        row = self._row(name_or_id)
        sha = self._db.execute(
            "SELECT sha256 FROM versions WHERE character_id=? AND version=?", (row["id"], row["latest_version"])
        ).fetchone()
        return row["id"], int(row["latest_version"]), sha[0] if sha else ""

    def summary(self, name_or_id: str) -> CharacterSummary:
        return self._summary(self._row(name_or_id))

    def list(
        self, *, search: str | None = None, tag: str | None = None, include_archived: bool = False
    ) -> list[CharacterSummary]:
        """Characters sorted by name; `search` is a case-insensitive name substring, `tag` an exact tag."""
        sql, args = "SELECT * FROM characters WHERE 1=1", []
        if not include_archived:
            sql += " AND archived=0"
        if search:
            sql += " AND instr(lower(name), lower(?)) > 0"
            args.append(search)
        rows = [self._summary(r) for r in self._db.execute(sql + " ORDER BY name COLLATE NOCASE, id", args)]
        if tag:
            rows = [r for r in rows if tag.lower() in (t.lower() for t in r.tags)]
        return rows

    search = list

    def log(self, name_or_id: str) -> list[VersionInfo]:
        """Every stored version, oldest first."""
        row = self._row(name_or_id)
        cur = self._db.execute(
            "SELECT version, name, updated, change, sha256, size FROM versions WHERE character_id=? ORDER BY version",
            (row["id"],),
        )
        return [VersionInfo(*r) for r in cur]

    def __iter__(self) -> Iterator[CharacterSummary]:
        return iter(self.list())

    # ------------------------------------------------------------------------------------------ writing

    def add(self, character: Character) -> Character:
        """Store a new character (its first stored version) or the next version of an existing one."""
        validate_name(character.name)
        with self._tx():
            row = self._db.execute(
                "SELECT latest_version, archived FROM characters WHERE id=?", (character.id,)
            ).fetchone()
            if row is None:
                self._check_name_free(character.name, character.id)
                self._upsert_head(character, created=True)
                self._write_version(character)
            else:
                if character.version != row[0] + 1:
                    raise InputError(
                        f"character '{character.name}' is at version {row[0]}; cannot store version "
                        f"{character.version}: load the latest version and change that"
                    )
                if not row[1]:
                    self._check_name_free(character.name, character.id)
                self._write_version(character)
                self._upsert_head(character, created=False)
        return character

    def rename(self, name_or_id: str, new_name: str, *, now: datetime | str | None = None) -> Character:
        """Rename (a new version with the new name; older versions keep the old one)."""
        new_name = validate_name(new_name)
        ch = self.get(name_or_id)
        if ch.name == new_name:
            return ch
        new = ch.next_version(f"renamed from '{ch.name}' to '{new_name}'", now=_iso(now))
        new.name = new_name
        return self.add(new)

    def delete(self, name_or_id: str) -> CharacterSummary:
        """Remove a character and all its versions. Variants made from it keep their own copy of the identity."""
        with self._tx():
            row = self._row(name_or_id)
            self._db.execute("DELETE FROM characters WHERE id=?", (row["id"],))
        return self._summary(row)

    def touch_last_used(self, name_or_id: str, *, now: datetime | str | None = None) -> None:
        """Record that a character was used for a render (feeds `archive_inactive`; not a new version).

        Best effort: a read-only or busy library skips it after a short wait rather than failing the render
        that used the character (scoring is a reader).
        """
        row = self._row(name_or_id)
        if self.readonly:
            return
        self._db.execute("PRAGMA busy_timeout=1000")
        try:
            with self._tx():
                self._db.execute("UPDATE characters SET last_used=? WHERE id=?", (_iso(now), row["id"]))
        except OutputError:
            logger.info("library busy: last-used time of '%s' not updated", printable(row["name"]))
        finally:
            self._db.execute("PRAGMA busy_timeout=10000")

    def archive_inactive(self, days: int, archive_dir: str | Path, *, now: datetime | str | None = None) -> list[Path]:
        """Export characters unused for more than `days` to `archive_dir`, THEN hide them from the active list.

        The `.flx` (latest version, crops included) is written and read back before the row is flagged, so a
        failure leaves the character active. Archived rows stay in the file (all versions) and free their name;
        importing the archived `.flx` restores the character.
        """
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_ARCHIVE_DAYS:
            raise InputError(f"--days must be a whole number from 1 to {MAX_ARCHIVE_DAYS} (got {days!r})")
        now_s = _iso(now)
        cutoff = parse_time(now_s) - timedelta(days=days)
        out_dir = ensure_writable_dir(archive_dir)
        written: list[Path] = []
        for s in self.list():
            last = parse_time(s.last_used or s.updated)
            if last >= cutoff:
                continue
            ch = self.get(s.id)
            dest = out_dir / f"{slug(s.name)}-{s.id[:8]}-v{ch.version}.flx"
            atomic_write_bytes(dest, to_bytes(ch))
            read_flx(dest)  # verify the archive before hiding the character
            with self._tx():
                self._db.execute("UPDATE characters SET archived=1, archived_at=? WHERE id=?", (now_s, s.id))
            written.append(dest)
        return written

    # ------------------------------------------------------------------------------------------ exchange

    def export(
        self, name_or_id: str, out: str | Path, *, version: int | None = None, include_references: bool = True
    ) -> Path:
        """Write one version to a `.flx` file (atomically)."""
        ch = self.get(name_or_id, version)
        return atomic_write_bytes(out, to_bytes(ch, include_references=include_references))

    def export_all(self, out_dir: str | Path, *, include_references: bool = True) -> list[Path]:
        """Every active character's latest version as `<name>.flx` in `out_dir`."""
        d = ensure_writable_dir(out_dir)
        used: set[str] = set()
        paths = []
        for s in self.list():
            stem = slug(s.name)
            if stem.lower() in used:
                stem = f"{stem}-{s.id[:8]}"
            used.add(stem.lower())
            paths.append(self.export(s.id, d / f"{stem}.flx", include_references=include_references))
        return paths

    def _import_one(self, ch: Character, source: str) -> ImportResult:
        blob = to_bytes(ch)
        row = self._db.execute("SELECT latest_version, archived FROM characters WHERE id=?", (ch.id,)).fetchone()
        if row is None:
            self._check_name_free(ch.name, ch.id)
            self._upsert_head(ch, created=True)
            self._write_version(ch)
            return ImportResult(ch.id, ch.name, ch.version, "added", source)
        have = self._db.execute(
            "SELECT sha256 FROM versions WHERE character_id=? AND version=?", (ch.id, ch.version)
        ).fetchone()
        if have is not None:
            if have[0] != hashlib.sha256(blob).hexdigest():
                raise CharacterFileError(
                    f"{source}: version {ch.version} of '{ch.name}' ({ch.id}) differs from the one in the library: "
                    "the same version cannot have two contents; rename one copy before importing"
                )
            status = "unchanged"
        else:
            self._write_version(ch)
            status = "new-version"
        latest, archived = row
        if archived or ch.version > latest:
            # the head row keeps its own name unless this import becomes the latest version
            head_name = (
                ch.name
                if ch.version > latest
                else self._db.execute("SELECT name FROM characters WHERE id=?", (ch.id,)).fetchone()[0]
            )
            self._check_name_free(head_name, ch.id)
            if ch.version > latest:
                self._upsert_head(ch, created=False)
            self._db.execute("UPDATE characters SET archived=0, archived_at=NULL WHERE id=?", (ch.id,))
        return ImportResult(ch.id, ch.name, ch.version, status, source)

    def import_file(self, path: str | Path) -> ImportResult:
        """Import one `.flx` (verified first). Nothing is written unless the whole import succeeds."""
        return self.import_character(read_flx(path).character, Path(path).name)

    def import_character(self, character: Character, source: str) -> ImportResult:
        """Import a character already read and verified by the `.flx` reader (`read_flx` / `from_bytes`: an upload,
        a Ray payload), in one transaction; `source` names it in messages."""
        with self._tx():
            return self._import_one(character, source)

    def import_dir(self, folder: str | Path) -> list[ImportResult]:
        """Import every `*.flx` in a folder, all or nothing: one bad file aborts the whole import."""
        d = Path(folder)
        if not d.is_dir():
            raise InputError(f"{d} is not a folder: give a folder of .flx files or one .flx file")
        files = sorted(f for f in d.glob("*.flx") if not f.name.startswith("."))  # dot-files: temps, not exports
        if not files:
            raise InputError(f"no .flx files in {d}")
        loaded = [(read_flx(f).character, f.name) for f in files]
        with self._tx():
            return [self._import_one(ch, src) for ch, src in loaded]

    def import_path(self, path: str | Path) -> list[ImportResult]:
        p = Path(path)
        return self.import_dir(p) if p.is_dir() else [self.import_file(p)]
