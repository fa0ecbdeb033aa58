"""The job store: one SQLite file (WAL) with a row per batch and per shot, shared by `flx batch`, the server and
the Ray driver.

Why SQLite: a studio's queue lives on one machine and must survive `kill -9`. Every state change is one short
transaction (WAL), so a killed runner leaves the store as it was after its last committed
change: finished shots stay done (their files were renamed into place before the row said so), a shot that was
running is run again. Readers (`flx batch status`, the server's progress stream) never block the runner.

A batch is identified by its job name and output folder: submitting the same job again re-plans it in place, and
each shot keeps its content key, so only changed or unfinished shots run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from engine._core.errors import InputError, OutputError

SCHEMA = 1
BatchStatus = Literal["queued", "running", "done", "failed", "cancelled"]
ShotStatus = Literal["pending", "running", "done", "failed", "cancelled"]
HEARTBEAT_S = 2.0
STALE_AFTER_S = 30.0  # a runner silent this long (or whose pid is gone) no longer owns its batch

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, out_dir TEXT NOT NULL, source TEXT NOT NULL,
    document TEXT NOT NULL, base_dir TEXT NOT NULL, status TEXT NOT NULL, created TEXT NOT NULL,
    updated TEXT NOT NULL, cancel INTEGER NOT NULL DEFAULT 0, runner TEXT, runner_pid INTEGER,
    runner_host TEXT, heartbeat REAL, current TEXT, step INTEGER, steps INTEGER, eta_s REAL,
    error TEXT, seq INTEGER NOT NULL DEFAULT 0, options TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS shots (
    batch_id TEXT NOT NULL, shot_id TEXT NOT NULL, position INTEGER NOT NULL, kind TEXT NOT NULL,
    key TEXT, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, error TEXT,
    outputs TEXT NOT NULL DEFAULT '[]', score REAL, started TEXT, finished TEXT, worker TEXT,
    duration_s REAL, PRIMARY KEY (batch_id, shot_id)
);
CREATE TABLE IF NOT EXISTS produced (
    character_id TEXT NOT NULL, version INTEGER NOT NULL, from_version INTEGER NOT NULL,
    batch_id TEXT NOT NULL, shot_id TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (character_id, version)
);
"""


class BatchNotFound(InputError):
    """No batch with that id or name in the job store."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def default_store_path(settings) -> Path:
    """`<home>/jobs.sqlite`: the one queue of this engine home (CLI, server and Ray driver share it)."""
    return Path(settings.home) / "jobs.sqlite"


def batch_id_for(name: str, out_dir: Path) -> str:
    """A batch's id: its job name and resolved output folder (the same job file re-run is the same batch)."""
    return hashlib.sha256(f"{name}\0{Path(out_dir).resolve()}".encode()).hexdigest()[:16]


class ShotInfo(BaseModel):
    id: str
    kind: str
    position: int
    status: ShotStatus
    key: str | None = None
    attempts: int = 0
    error: str | None = None
    outputs: list[str] = Field(default_factory=list)
    score: float | None = None
    started: str | None = None
    finished: str | None = None
    worker: str | None = None
    duration_s: float | None = None


class Progress(BaseModel):
    step: int | None = None
    steps: int | None = None
    eta_s: float | None = None


class BatchInfo(BaseModel):
    id: str
    name: str
    out_dir: str
    source: str
    status: BatchStatus
    created: str
    updated: str
    cancel_requested: bool = False
    runner: str | None = None
    current: str | None = None
    progress: Progress = Field(default_factory=Progress)
    error: str | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    shots: list[ShotInfo] = Field(default_factory=list)
    seq: int = 0

    @property
    def failed(self) -> list[ShotInfo]:
        return [s for s in self.shots if s.status == "failed"]


def _runner_process_alive(pid: int | None, host: str | None) -> bool:
    """A runner on this machine: its pid still runs. On another machine (a shared store): trust the heartbeat."""
    from engine._core.atomic import pid_alive

    if host is None:
        return False
    if host != socket.gethostname():
        return True
    return bool(pid) and pid_alive(int(pid))


class JobStore:
    """The SQLite job store. Open one per thread (connections are not shared); every method is one transaction."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        try:
            if readonly:
                if not self.path.is_file():
                    raise InputError(f"no job store at {self.path}: run `flx batch run JOB.yaml` first")
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, isolation_level=None)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode: a commit survives any process crash (kill -9); only an OS crash or power cut
                # can roll back the last commits, and those are re-derived: a shot's folder (fsynced, renamed)
                # carries its key in shot.json, so a lost "done" row is adopted on the next run, not re-rendered
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA_SQL)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA),))
        except sqlite3.Error as e:
            raise OutputError(f"cannot open the job store {self.path}: {e}: check the engine home (--home)") from None
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise OutputError(f"the job store {self.path} is open read-only")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ----- batches ----------------------------------------------------------------------------
    def submit(self, job, *, out_dir: str | os.PathLike, source: str, options: dict | None = None) -> str:
        """Queue `job` (a `JobFile`) writing to `out_dir`; the same name + folder is the same batch, re-planned:
        shots that left the job are dropped, new ones are pending, finished ones keep their rows (and are
        skipped by the runner when their content key is unchanged)."""
        out = Path(out_dir).resolve()
        bid = batch_id_for(job.name, out)
        doc = json.dumps(job.model_dump(mode="json"), sort_keys=True)
        now = _now()
        with self._tx() as db:
            row = db.execute("SELECT status, runner_pid, runner_host, heartbeat FROM batches WHERE id=?", (bid,))
            row = row.fetchone()
            if row is not None and row["status"] == "running" and self._runner_alive(row):
                raise InputError(
                    f"batch '{job.name}' ({bid}) is running now (pid {row['runner_pid']}): wait for it, or "
                    f"`flx batch cancel {bid}`"
                )
            db.execute(
                "INSERT INTO batches (id, name, out_dir, source, document, base_dir, status, created, updated,"
                " options) VALUES (?,?,?,?,?,?,'queued',?,?,?) ON CONFLICT(id) DO UPDATE SET document=excluded."
                "document, source=excluded.source, base_dir=excluded.base_dir, status='queued', cancel=0,"
                " updated=excluded.updated, error=NULL, options=excluded.options, seq=seq+1",
                (bid, job.name, str(out), source, doc, job.base_dir, now, now, json.dumps(options or {})),
            )
            ids = [s.id for s in job.shots]
            db.execute(
                f"DELETE FROM shots WHERE batch_id=? AND shot_id NOT IN ({','.join('?' * len(ids))})", (bid, *ids)
            )
            for pos, s in enumerate(job.shots):
                db.execute(
                    "INSERT INTO shots (batch_id, shot_id, position, kind, status) VALUES (?,?,?,?,'pending')"
                    " ON CONFLICT(batch_id, shot_id) DO UPDATE SET position=excluded.position, kind=excluded.kind,"
                    " status=CASE WHEN status IN ('running', 'cancelled') THEN 'pending' ELSE status END",
                    (bid, s.id, pos, s.kind),
                )
        return bid

    def document(self, batch_id: str):
        """The batch's `JobFile` as submitted."""
        from .specs import JobFile

        row = self._row(batch_id)
        return JobFile.model_validate({**json.loads(row["document"]), "base_dir": row["base_dir"]})

    def options(self, batch_id: str) -> dict:
        return json.loads(self._row(batch_id)["options"])

    def _row(self, batch_id: str) -> sqlite3.Row:
        row = self._db.execute("SELECT * FROM batches WHERE id=?", (str(batch_id),)).fetchone()
        if row is None:
            row = self._db.execute("SELECT * FROM batches WHERE name=? ORDER BY updated DESC", (str(batch_id),))
            row = row.fetchone()
        if row is None:
            from engine._core.text import printable

            raise BatchNotFound(f"no batch '{printable(batch_id, limit=80)}' in {self.path}: see `flx batch list`")
        return row

    def resolve(self, batch_id_or_name: str) -> str:
        return self._row(batch_id_or_name)["id"]

    def _info(self, row: sqlite3.Row, *, shots: bool = True) -> BatchInfo:
        shot_rows = self._db.execute("SELECT * FROM shots WHERE batch_id=? ORDER BY position", (row["id"],)).fetchall()
        counts: dict[str, int] = {}
        infos = []
        for r in shot_rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
            if shots:
                infos.append(
                    ShotInfo(
                        id=r["shot_id"],
                        kind=r["kind"],
                        position=r["position"],
                        status=r["status"],
                        key=r["key"],
                        attempts=r["attempts"],
                        error=r["error"],
                        outputs=json.loads(r["outputs"]),
                        score=r["score"],
                        started=r["started"],
                        finished=r["finished"],
                        worker=r["worker"],
                        duration_s=r["duration_s"],
                    )  # fmt: skip
                )
        return BatchInfo(
            id=row["id"], name=row["name"], out_dir=row["out_dir"], source=row["source"], status=row["status"],
            created=row["created"], updated=row["updated"], cancel_requested=bool(row["cancel"]),
            runner=row["runner"], current=row["current"],
            progress=Progress(step=row["step"], steps=row["steps"], eta_s=row["eta_s"]),
            error=row["error"], counts=counts, shots=infos, seq=row["seq"],
        )  # fmt: skip

    def batch(self, batch_id: str) -> BatchInfo:
        return self._info(self._row(batch_id))

    def batches(self, limit: int = 100) -> list[BatchInfo]:
        rows = self._db.execute("SELECT * FROM batches ORDER BY created DESC LIMIT ?", (int(limit),)).fetchall()
        return [self._info(r, shots=False) for r in rows]

    def events_since(self, batch_id: str, cursor: int) -> tuple[int, BatchInfo | None]:
        """(new cursor, the batch) when it changed since `cursor`, else (cursor, None): cheap to poll."""
        row = self._row(batch_id)
        if row["seq"] == cursor:
            return cursor, None
        return row["seq"], self._info(row)

    def cancel(self, batch_id: str) -> BatchInfo:
        """Ask the batch's runner to stop (it stops the running shot at its next step and keeps everything done).
        A queued batch is cancelled at once."""
        bid = self.resolve(batch_id)
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET cancel=1, seq=seq+1, updated=?,"
                " status=CASE WHEN status='queued' THEN 'cancelled' ELSE status END WHERE id=?",
                (_now(), bid),
            )
        return self.batch(bid)

    def cancel_requested(self, batch_id: str) -> bool:
        return bool(self._db.execute("SELECT cancel FROM batches WHERE id=?", (batch_id,)).fetchone()["cancel"])

    def _runner_alive(self, row) -> bool:
        beat = row["heartbeat"]
        return (
            beat is not None
            and time.time() - beat < STALE_AFTER_S
            and _runner_process_alive(row["runner_pid"], row["runner_host"])
        )

    def claim(self, batch_id: str, runner: str) -> None:
        """Make this process the batch's runner (refused while another live runner holds it)."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM batches WHERE id=?", (batch_id,)).fetchone()
            if row["status"] == "running" and row["runner"] != runner and self._runner_alive(row):
                raise InputError(
                    f"batch '{row['name']}' is already running (pid {row['runner_pid']}): follow it with "
                    f"`flx batch status {batch_id}`"
                )
            db.execute(
                "UPDATE batches SET status='running', runner=?, runner_pid=?, runner_host=?, heartbeat=?, cancel=0,"
                " error=NULL, updated=?, seq=seq+1 WHERE id=?",
                (runner, os.getpid(), socket.gethostname(), time.time(), _now(), batch_id),
            )
            db.execute("UPDATE shots SET status='pending' WHERE batch_id=? AND status IN ('running','cancelled')",
                       (batch_id,))  # fmt: skip

    def claim_next(self, runner: str) -> str | None:
        """The oldest queued batch (or a running one whose runner died), claimed for `runner`; None when idle."""
        rows = self._db.execute(
            "SELECT * FROM batches WHERE status IN ('queued','running') ORDER BY created"
        ).fetchall()
        for row in rows:
            if row["status"] == "running" and self._runner_alive(row):
                continue
            try:
                self.claim(row["id"], runner)
            except InputError:
                continue
            return row["id"]
        return None

    def finish(self, batch_id: str, status: BatchStatus, error: str | None = None) -> BatchInfo:
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET status=?, error=?, current=NULL, step=NULL, steps=NULL, eta_s=NULL, updated=?,"
                " runner_pid=NULL, heartbeat=NULL, seq=seq+1 WHERE id=?",
                (status, error, _now(), batch_id),
            )
        return self.batch(batch_id)

    def progress(self, batch_id: str, current: str | None, step: int | None, steps: int | None, eta_s) -> None:
        """The running shot and its step (also the runner's heartbeat)."""
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET current=?, step=?, steps=?, eta_s=?, heartbeat=?, seq=seq+1 WHERE id=?",
                (current, step, steps, eta_s, time.time(), batch_id),
            )

    def heartbeat(self, batch_id: str) -> None:
        """The runner is alive (a runner silent for `STALE_AFTER_S` is taken over by the next worker)."""
        with self._tx() as db:
            db.execute("UPDATE batches SET heartbeat=? WHERE id=?", (time.time(), batch_id))

    # ----- shots ------------------------------------------------------------------------------
    def shot_row(self, batch_id: str, shot_id: str) -> sqlite3.Row:
        return self._db.execute("SELECT * FROM shots WHERE batch_id=? AND shot_id=?", (batch_id, shot_id)).fetchone()

    def start_shot(self, batch_id: str, shot_id: str, key: str, worker: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE shots SET status='running', key=?, attempts=attempts+1, error=NULL, started=?, finished=NULL,"
                " worker=? WHERE batch_id=? AND shot_id=?",
                (key, _now(), worker, batch_id, shot_id),
            )
            db.execute("UPDATE batches SET current=?, step=NULL, steps=NULL, eta_s=NULL, heartbeat=?, seq=seq+1"
                       " WHERE id=?", (shot_id, time.time(), batch_id))  # fmt: skip

    def end_shot(
        self,
        batch_id: str,
        shot_id: str,
        status: ShotStatus,
        *,
        key: str | None = None,
        outputs: list[str] | None = None,
        score: float | None = None,
        error: str | None = None,
        duration_s: float | None = None,
        produced: list[tuple[str, int, int]] = (),
    ) -> None:
        """Record a shot's end. `produced`: (character id, new version, version it was made from) for the character
        versions the shot stored (pack, train): they keep the keys of later runs stable."""
        with self._tx() as db:
            db.execute(
                "UPDATE shots SET status=?, key=COALESCE(?, key), outputs=?, score=?, error=?, finished=?,"
                " duration_s=? WHERE batch_id=? AND shot_id=?",
                (status, key, json.dumps(outputs or []), score, error, _now(), duration_s, batch_id, shot_id),
            )
            for cid, version, from_version in produced:
                db.execute(
                    "INSERT OR REPLACE INTO produced VALUES (?,?,?,?,?,?)",
                    (cid, int(version), int(from_version), batch_id, shot_id, key or ""),
                )
            db.execute("UPDATE batches SET seq=seq+1, updated=? WHERE id=?", (_now(), batch_id))

    def set_pending(self, batch_id: str, shot_ids: list[str]) -> None:
        with self._tx() as db:
            for sid in shot_ids:
                db.execute("UPDATE shots SET status='pending', error=NULL WHERE batch_id=? AND shot_id=?",
                           (batch_id, sid))  # fmt: skip

    def produced_by(self, batch_id: str) -> dict[tuple[str, int], dict[str, Any]]:
        """(character id, version) -> {from_version, shot_id, key} for versions this batch's shots stored."""
        rows = self._db.execute("SELECT * FROM produced WHERE batch_id=?", (batch_id,)).fetchall()
        return {
            (r["character_id"], r["version"]): {
                "from_version": r["from_version"],
                "shot": r["shot_id"],
                "key": r["key"],
            }
            for r in rows
        }


__all__ = [
    "BatchInfo",
    "BatchNotFound",
    "JobStore",
    "Progress",
    "ShotInfo",
    "batch_id_for",
    "default_store_path",
]
