"""`RayBackend`: the job runner's shots on a Ray cluster, one warm `EngineActor` per GPU.

The driver (`engine.jobs.runner.run_batch` with `backend=RayBackend(...)`) plans the batch and owns the job store;
this backend only moves shots to workers and results back:

- **Actors.** One long-lived `EngineActor` per GPU (Ray resource `{"GPU": 1}`, or a custom resource) holds one
  `engine.api.Engine`, so pipelines stay loaded across shots, stages and batches of the same driver. Each actor
  works in a private folder on its machine (`worker_home`, default `<FLX_HOME>/ray-workers`).
- **Data.** Character versions travel once per batch as Ray objects (`ray.put` of the `.flx` bytes); an actor
  writes each version it needs once into its folder (checked against the sha256) and renders from that file. Pack
  and train shots make a new version: the actor imports its inputs into a library private to that attempt, and
  the new version comes back as `.flx` bytes that the driver imports into its own library.
- **Inputs.** In bytes mode the files a shot reads on the driver (start images, audio, training folders, a score
  shot's media) travel as Ray objects too and the actor points the shot at its copies.
- **Outputs.** `output_mode="bytes"` (default): the actor renders into a private folder and returns the files'
  bytes; the driver writes them as the shot's staging folder (`<out>/.staging/<shot>-<key>/`, written hidden and
  renamed into place, so it is complete or absent). `output_mode="shared"`: every worker sees the batch's output
  folder at the same path (NFS/SMB) and the actor renders straight into that staging folder, as the embedded
  queue does (a retried sequence or training continues there). Either way the runner commits on the driver
  (staging -> `<out>/<shot id>/`, manifest, store row): the output folder only ever holds complete shots.
- **Failures.** A worker that dies mid-shot (`RayActorError`, a lost node) costs that attempt: the shot goes back
  to the front of the queue for another live actor, at most `max_retries` more times, and a replacement actor is
  started (Ray places it when resources allow). A dead attempt's private folder is removed by the next actor on
  that machine; nothing half-written is ever committed. A user error (`EngineError`) or one of the embedded
  queue's boundary errors is not retried: it is the shot's one-line failure reason, as in the embedded queue.

Ray is imported lazily (`pip install -e '.[distributed]'`); nothing here runs at import time.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from engine._core.errors import EngineError, InputError, JobCancelled

if TYPE_CHECKING:
    from engine._core.settings import EngineSettings
    from engine.api import Engine

MISSING_RAY = "Ray is not installed: pip install -e '.[distributed]' (on the driver and on every worker machine)"
MAX_RETRIES = 10
MAX_ACTORS = 1024
MAX_START_FAILURES = 3
"""Actors failing to start this many times in a row (with none alive) fail the waiting shots with the reason."""
MUTATING_KINDS = ("pack", "train")
"""Shot kinds that store a new character version (the actor gives them a private library per attempt)."""
_DEATH_ERRORS = (
    "RayActorError",  # ActorDiedError and ActorUnavailableError are subclasses
    "WorkerCrashedError",
    "ObjectLostError",  # OwnerDiedError, ObjectReconstructionFailedError, ... are subclasses
    "NodeDiedError",
    "LocalRayletDiedError",
)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _ray():
    try:
        import ray
    except ImportError:
        raise EngineError(MISSING_RAY) from None
    return ray


def _death_errors(ray) -> tuple[type[BaseException], ...]:
    return tuple(getattr(ray.exceptions, n) for n in _DEATH_ERRORS if hasattr(ray.exceptions, n))


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _start_error(err: BaseException) -> str:
    """The last line of a failed actor constructor's traceback (Ray puts the whole traceback in the message)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    cause = next((ln for ln in reversed(lines) if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b", ln)), None)
    return _one_line(cause or (lines[0] if lines else type(err).__name__), 300)


def _clean_stale_actor_dirs(root: Path, host: str) -> None:
    """Remove the folders of this machine's actors whose process is gone (a killed worker leaves its folder)."""
    from engine._core.atomic import pid_alive

    prefix = f"actor-{host}-"
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            pid = entry.name[len(prefix) :]
            if entry.name.startswith(prefix) and pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(entry.path, ignore_errors=True)


INPUT_KEYS = ("start_image", "end_image", "audio", "prior_dir")
"""Shot parameters that name files or folders on the driver (plus a train shot's `source` folder, a sequence's
per-shot images and a score shot's media)."""
MAX_INPUT_FILES = 10000
MAX_INPUT_BYTES = 16 * 2**30


def _input_paths(kind: str, params: dict[str, Any]) -> list[str]:
    """The driver paths a shot reads (after a score shot's globs were expanded)."""
    paths = [params[k] for k in INPUT_KEYS if isinstance(params.get(k), str)]
    if kind == "train" and isinstance(params.get("source"), str) and params["source"] not in ("pack", "refs"):
        paths.append(params["source"])
    if kind == "sequence":
        for s in params.get("shots") or []:
            if isinstance(s, dict):
                paths += [s[k] for k in ("start_image", "end_image") if isinstance(s.get(k), str)]
    if kind == "score":
        paths += [m for m in params.get("media") or [] if isinstance(m, str)]
    return list(dict.fromkeys(paths))


def _map_inputs(kind: str, params: dict[str, Any], where: dict[str, str]) -> dict[str, Any]:
    """`params` with every input path (see `_input_paths`) replaced by `where[path]`."""
    to = lambda v: where.get(v, v) if isinstance(v, str) else v  # noqa: E731
    out = {k: (to(v) if k in INPUT_KEYS else v) for k, v in params.items()}
    if kind == "train" and "source" in out:
        out["source"] = to(out["source"])
    if kind == "sequence":
        out["shots"] = [
            {k: (to(v) if k in ("start_image", "end_image") else v) for k, v in s.items()}
            if isinstance(s, dict)
            else s
            for s in out.get("shots") or []
        ]
    if kind == "score":
        out["media"] = [to(m) for m in out.get("media") or []]
    return out


def _unmap(value: Any, back: dict[str, str]) -> Any:
    """A report with the actor's copies of input files named by their driver paths again."""
    if isinstance(value, dict):
        return {k: _unmap(v, back) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_unmap(v, back) for v in value]
    if isinstance(value, str) and back:
        for local, path in back.items():
            if value == local or value.startswith(local + os.sep):
                return path + value[len(local) :]
    return value


# ------------------------------------------------------------------------------------------------ worker side


class EngineActor:
    """A Ray actor (one per GPU) holding one warm `Engine`; runs one shot at a time with the runner's
    `execute_shot`. Created by `RayBackend` as `ray.remote(EngineActor).options(...)`; the class itself is plain
    Python (the same checkout is installed on every worker).

    Args:
        home (`str`, *optional*): the folder for this machine's actors (each actor uses its own subfolder
            `actor-<host>-<pid>`). Defaults to `<FLX_HOME>/ray-workers` of the worker.
        settings (`dict`, *optional*): `EngineSettings` fields for the worker's Engine (e.g. `weights_dir`); the
            rest come from the worker's own environment (`FLX_WEIGHTS_DIR`, ...).
    """

    def __init__(self, home: str | None = None, settings: dict[str, Any] | None = None):
        from engine._core.settings import EngineSettings
        from engine.api import Engine

        base = EngineSettings(**(settings or {}))
        root = Path(home) if home else Path(base.home) / "ray-workers"
        self.host = _SAFE.sub("_", socket.gethostname()) or "host"
        root.mkdir(parents=True, exist_ok=True)
        _clean_stale_actor_dirs(root, self.host)
        self.dir = root / f"actor-{self.host}-{os.getpid()}"
        shutil.rmtree(self.dir, ignore_errors=True)  # a reused pid's leftovers
        (self.dir / "characters").mkdir(parents=True)
        self.engine = Engine(base.model_copy(update={"library_path": self.dir / "library.sqlite"}))
        self._run_lock = threading.Lock()  # one shot at a time (the actor is threaded only to answer progress/stop)
        self._progress: tuple[str, int, int] | None = None
        self._stop = threading.Event()
        self._flx: dict[str, Path] = {}

    # --- small calls (answered while a shot runs: the actor has max_concurrency=2) ---
    def info(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node_id": ctx.get_node_id(),
            "actor_id": ctx.get_actor_id(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
            "dir": str(self.dir),
        }

    def progress(self) -> tuple[str, int, int] | None:
        """(shot id, steps done, steps total) of the shot being rendered, or None."""
        return self._progress

    def stop(self) -> None:
        """Stop the running shot at its next denoising step (a cancel from the driver)."""
        self._stop.set()

    # --- the work ---
    def run_shot(
        self,
        shot,
        characters: dict[str, dict[str, Any]],
        staging: str | None,
        attempt: int,
        keep: list[str],
        inputs: dict[str, dict[str, Any]] | None = None,
    ) -> dict:
        """Run one shot attempt with the runner's `execute_shot`.

        Args:
            shot (`PlannedShot`): the planned shot (plain data).
            characters (`dict`): alias -> {name, id, version, sha256, ref}; `ref` is the `.flx` bytes as a Ray
                object, fetched once per version.
            staging (`str`, *optional*): the shot's staging folder on the shared output path (shared mode); None:
                render into a private folder and return the files' bytes.
            attempt (`int`): 1 for the first run of the shot, 2 after its first worker died, ...
            keep (`list[str]`): presets the driver still has shots for; other warm pipelines are released before
                a shot loads a new model (as the embedded queue does).
            inputs (`dict`, *optional*): bytes mode: driver path -> {dir, files: {relative name: Ray object}} of the
                files the shot reads (start images, audio, training folders, score media); they are written into
                this attempt's folder and the shot's parameters point there.

        Returns a plain dict: `status` done|failed|cancelled, and `files`, `report`, `score`, `produced` (alias ->
        `.flx` bytes of the version a pack/train shot stored), `data` (relative path -> bytes, bytes mode), or
        `error` (one line).
        """
        with self._run_lock:
            self._stop.clear()
            work = self.dir / "attempts" / f"{_SAFE.sub('_', shot.shot_id)}-{attempt}-{secrets.token_hex(4)}"
            work.mkdir(parents=True)
            try:
                if shot.preset and shot.preset not in self.engine.loaded_presets():
                    self.engine.release_pipelines(set(keep) | {shot.preset})
                out = Path(staging) if staging else work / "out"
                return self._run(shot, characters, work, out, inline=staging is None, inputs=inputs or {})
            finally:
                self._progress = None
                shutil.rmtree(work, ignore_errors=True)

    def _run(self, shot, characters, work: Path, out: Path, *, inline: bool, inputs: dict) -> dict:
        from engine.jobs.runner import execute_shot

        def on_step(step: int, steps: int) -> None:
            self._progress = (shot.shot_id, int(step), int(steps))
            if self._stop.is_set() and shot.kind != "train":  # training checkpoints first, then stops
                raise JobCancelled("cancelled")

        self._progress = (shot.shot_id, 0, 0)
        try:
            files = {alias: self._flx_file(p) for alias, p in characters.items()}
            where = self._inputs(inputs, work) if inputs else {}
            if where:
                shot = replace(shot, params=_map_inputs(shot.kind, shot.params, where))
            with self._names_for(shot, work, files) as names:
                result = execute_shot(
                    self.engine, shot, out, characters=names, on_step=on_step, should_stop=self._stop.is_set
                )
                produced = {a: self.engine.characters.export_bytes(n) for a, n in (result.produced or {}).items()}
        except JobCancelled as e:
            return {"status": "cancelled", "error": str(e) or "cancelled"}
        except EngineError as e:
            return {"status": "failed", "error": str(e)}
        except (MemoryError, RuntimeError, OSError, ValueError, TypeError, KeyError, IndexError) as e:
            # the same boundary as the embedded queue: one shot's unexpected failure is its failure reason
            return {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        reply = {
            "status": "done",
            "files": list(result.files),
            "report": _unmap(result.report, {local: path for path, local in where.items()}),
            "score": result.score,
            "produced": produced,
        }
        if inline:
            reply["data"] = {rel: (out / rel).read_bytes() for rel in result.files}
        return reply

    @contextlib.contextmanager
    def _names_for(self, shot, work: Path, files: dict[str, Path]) -> Iterator[dict[str, str]]:
        """alias -> what `execute_shot` opens: the verified `.flx` file (the exact version the driver sent), or for
        pack/train shots the id in a library private to this attempt, where they store the new version (the
        Engine's library is pointed there for the shot: the actor runs one shot at a time)."""
        if shot.kind not in MUTATING_KINDS:
            yield {alias: str(p) for alias, p in files.items()}
            return
        saved = self.engine.settings
        self.engine.settings = saved.model_copy(update={"library_path": work / "library.sqlite"})
        try:
            names = {alias: self.engine.characters.import_path(path)[0].id for alias, path in files.items()}
            yield names
        finally:
            self.engine.settings = saved

    def _inputs(self, inputs: dict[str, dict[str, Any]], work: Path) -> dict[str, str]:
        """Write the shot's input files (sent by the driver) under `work/inputs/`; driver path -> local path."""
        import ray

        from engine._core.atomic import atomic_write_bytes

        where = {}
        for i, (path, spec) in enumerate(inputs.items()):
            root = work / "inputs" / str(i)
            for rel, ref in spec["files"].items():
                target = (root / rel).resolve()
                if root.resolve() not in target.parents:
                    raise EngineError(f"an input file name leaves its folder: {rel!r}")
                atomic_write_bytes(target, ray.get(ref))
            where[path] = str(root if spec["dir"] else root / next(iter(spec["files"])))
        return where

    def _flx_file(self, payload: dict[str, Any]) -> Path:
        """The version's `.flx` in this actor's folder, fetched from the object store once per sha256."""
        import hashlib

        import ray

        from engine._core.atomic import atomic_write_bytes

        sha = payload["sha256"]
        path = self._flx.get(sha)
        if path is None or not path.is_file():
            data = ray.get(payload["ref"])
            if hashlib.sha256(data).hexdigest() != sha:
                raise EngineError(
                    f"character '{payload['name']}' arrived damaged (sha256 mismatch): run the batch again"
                )
            path = atomic_write_bytes(self.dir / "characters" / f"{sha}.flx", data)
            self._flx[sha] = path
        return path


# ------------------------------------------------------------------------------------------------ driver side


@dataclass(frozen=True)
class InFlightShot:
    """A shot attempt running on an actor (what `RayBackend.in_flight()` reports)."""

    shot_id: str
    attempt: int
    worker: str
    pid: int
    host: str
    step: int
    steps: int
    started: float


@dataclass
class _Slot:
    actor: Any
    info: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    progress_ref: Any = None
    progress: tuple[str, int, int] | None = None


@dataclass
class _Attempt:
    shot: Any
    attempts: int = 0
    deaths: list[str] = field(default_factory=list)


@dataclass
class _Running:
    slot: _Slot
    task: _Attempt
    staging: Path | None
    started: float


class RayBackend:
    """Shots on a Ray cluster (a `ShotBackend` for `engine.jobs.runner.run_batch`).

    Args:
        address (`str`, *optional*, defaults to `"auto"`): `"auto"` attaches to the running cluster (`RAY_ADDRESS`,
            or the one `ray start` started on this machine); `HOST:PORT` or `ray://HOST:PORT` attaches to that one.
            When the process is already connected (`ray.init` was called), that connection is used.
        resources (`dict`, *optional*): Ray resources of one actor. Default `{"GPU": 1}` when the cluster has GPUs,
            else `{"CPU": 1}`. A custom resource (`{"flx_gpu": 1}`, set with `ray start --resources`) picks the
            machines that serve FLX.
        actors (`int`, *optional*): how many actors. Default: as many as the cluster has resource slots (one per
            GPU), capped by the shots of the stage being run.
        output_mode (`"bytes"` or `"shared"`, *optional*, defaults to `"bytes"`): how outputs reach the batch folder
            (see the module docstring).
        max_retries (`int`, *optional*, defaults to 2): how many more times a shot runs after its worker died.
        worker_home (`str`, *optional*): the actors' working folder on each worker machine.
        worker_settings (`dict`, *optional*): `EngineSettings` fields for the workers' Engines (e.g.
            `{"weights_dir": "/mnt/flx/weights"}`); the rest come from each worker's environment.
        engine (`Engine`, *optional*): the driver's Engine (the one given to `run_batch`), whose library receives
            the character versions that pack and train shots make on the workers.
        settings (`EngineSettings`, *optional*): instead of `engine`: the driver's settings (an Engine for the
            imports is made when a pack/train shot needs it).
        start_timeout_s (`float`, *optional*, defaults to 300): how long shots wait with no live actor (none could
            be placed) before they fail.

    Examples:
        >>> from engine.distributed import RayBackend
        >>> from engine.jobs.runner import run_batch
        >>> with RayBackend("auto", engine=eng) as backend:
        ...     info = run_batch(eng, store, batch_id, backend=backend)
    """

    actor_class = EngineActor

    def __init__(
        self,
        address: str = "auto",
        *,
        resources: dict[str, float] | None = None,
        actors: int | None = None,
        output_mode: Literal["bytes", "shared"] = "bytes",
        max_retries: int = 2,
        worker_home: str | None = None,
        worker_settings: dict[str, Any] | None = None,
        engine: Engine | None = None,
        settings: EngineSettings | None = None,
        start_timeout_s: float = 300.0,
        poll_s: float = 0.2,
    ):
        if not isinstance(address, str) or not address.strip() or len(address) > 500:
            raise InputError("--ray takes `auto` or a cluster address HOST:PORT (e.g. --ray 10.0.0.5:6379)")
        if output_mode not in ("bytes", "shared"):
            raise InputError(f"output mode must be `bytes` or `shared` (got {output_mode!r})")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= MAX_RETRIES:
            raise InputError(f"max retries must be a whole number from 0 to {MAX_RETRIES} (got {max_retries!r})")
        if actors is not None and (
            isinstance(actors, bool) or not isinstance(actors, int) or not 1 <= actors <= MAX_ACTORS
        ):
            raise InputError(f"actors must be a whole number from 1 to {MAX_ACTORS} (got {actors!r})")
        if resources is not None:
            ok = isinstance(resources, dict) and resources and all(
                isinstance(k, str) and k and isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1024
                for k, v in resources.items()
            )  # fmt: skip
            if not ok:
                raise InputError(
                    f"resources must map resource names to amounts > 0 (e.g. {{'GPU': 1}}), got {resources!r}"
                )
        if not 0 < float(start_timeout_s) <= 86400 or not 0 < float(poll_s) <= 10:
            raise InputError("start_timeout_s must be in (0, 86400] and poll_s in (0, 10]")
        self.address = address.strip()
        self.resources = dict(resources) if resources else None
        self.actors = actors
        self.output_mode = output_mode
        self.max_retries = max_retries
        self.worker_home = worker_home
        self.worker_settings = dict(worker_settings or {})
        self.engine = engine
        self.settings = settings if settings is not None else (engine.settings if engine is not None else None)
        self.worker = "ray"  # the actor the runner records for the shot being started/committed (see run())
        self.start_timeout_s = float(start_timeout_s)
        self.poll_s = float(poll_s)
        self._connected_here = False
        self._actor_resources: dict[str, float] | None = None
        self._target = 0
        self._idle: list[_Slot] = []
        self._starting: dict[Any, _Slot] = {}
        self._running: dict[Any, _Running] = {}
        self._flx_refs: dict[str, Any] = {}
        self._input_refs: dict[str, Any] = {}  # sha256 of an input file's bytes -> its Ray object
        self._start_errors: list[str] = []  # why actors failed to start, since the last one that did
        self._lock = threading.Lock()  # guards the snapshots read by in_flight()/workers() from other threads

    # ----- connection and actors ------------------------------------------------------------------------
    def connect(self) -> None:
        """Attach to the cluster (once). Errors name the fix (start a cluster, install Ray)."""
        ray = _ray()
        if ray.is_initialized():
            return
        address = self.address
        try:
            ray.init(address=address, namespace="flx", log_to_driver=False, configure_logging=False)
        except ConnectionError as e:
            if address == "auto":
                raise EngineError(
                    "no Ray cluster to attach to (--ray auto): start one with `ray start --head` (see "
                    "docs/distributed.md), set RAY_ADDRESS, or pass --ray HOST:PORT"
                ) from None
            raise EngineError(
                f"cannot attach to the Ray cluster at '{address}': {_one_line(str(e), 200)}: check `ray status` on "
                "the head machine and that RAY_AUTH_MODE=token is set when the cluster uses token auth"
            ) from None
        except ray.exceptions.AuthenticationError as e:
            raise EngineError(
                f"token authentication with the Ray cluster at '{address}' failed ({_one_line(str(e), 120)}): copy the "
                "head's ~/.ray/auth_token to this machine (or set RAY_AUTH_TOKEN) and set RAY_AUTH_MODE=token"
            ) from None
        except (ValueError, RuntimeError) as e:
            raise EngineError(
                f"cannot attach to the Ray cluster at '{address}': {_one_line(str(e), 200)}: check `ray status` on "
                "the head machine and that RAY_AUTH_MODE=token is set when the cluster uses token auth"
            ) from None
        self._connected_here = True

    def _plan_actors(self) -> None:
        ray = _ray()
        total = ray.cluster_resources()
        if self.resources is None:
            gpus = float(total.get("GPU", 0))
            res = {"GPU": 1.0} if gpus >= 1 else {"CPU": 1.0}
        else:
            res = {k: float(v) for k, v in self.resources.items()}
        slots = min(int(float(total.get(k, 0)) // v) for k, v in res.items())
        if slots < 1:
            raise EngineError(
                f"the Ray cluster has no room for an FLX actor: each needs {res}, the cluster has "
                f"{ {k: total.get(k, 0) for k in res} }: add a worker with `ray start --address HEAD:6379` or pass "
                "smaller resources"
            )
        self._actor_resources = res
        self._target = self.actors or slots

    def _actor_options(self) -> dict[str, Any]:
        res = dict(self._actor_resources or {})
        custom_or_gpu = any(k != "CPU" for k in res)
        return {
            "num_cpus": res.pop("CPU", 0.0 if custom_or_gpu else 1.0),
            "num_gpus": res.pop("GPU", 0.0),
            "resources": res,
            "max_restarts": 0,  # a dead actor is replaced by the backend, its shot retried elsewhere
            "max_task_retries": 0,
            "max_concurrency": 2,  # run_shot + progress/stop calls
        }

    def _start_actor(self) -> None:
        ray = _ray()
        cls = ray.remote(self.actor_class).options(**self._actor_options())
        actor = cls.remote(self.worker_home, self.worker_settings)
        self._starting[actor.info.remote()] = _Slot(actor)

    def _ensure_actors(self, want: int) -> None:
        if self._actor_resources is None:
            self._plan_actors()
        want = min(self._target, max(want, 1))
        while len(self._idle) + len(self._starting) + len(self._running) < want:
            self._start_actor()

    def workers(self) -> list[dict[str, Any]]:
        """The live actors' `info()` (pid, host, node id, GPU ids, folder)."""
        with self._lock:
            return [dict(s.info) for s in (*self._idle, *(r.slot for r in self._running.values())) if s.info]

    def in_flight(self) -> list[InFlightShot]:
        """The shot attempts running now, with the last step progress polled from their actors."""
        with self._lock:
            out = []
            for r in self._running.values():
                p = r.slot.progress if r.slot.progress and r.slot.progress[0] == r.task.shot.shot_id else None
                out.append(
                    InFlightShot(
                        r.task.shot.shot_id, r.task.attempts, r.slot.name, int(r.slot.info.get("pid", 0)),
                        str(r.slot.info.get("host", "")), p[1] if p else 0, p[2] if p else 0, r.started,
                    )
                )  # fmt: skip
            return out

    def close(self) -> None:
        """End the actors (their pipelines are freed) and, when this backend connected, the Ray connection."""
        if "ray" not in sys.modules:
            return
        ray = _ray()
        with self._lock:
            slots = [*self._idle, *self._starting.values(), *(r.slot for r in self._running.values())]
            self._idle, self._starting, self._running = [], {}, {}
        for s in slots:
            with contextlib.suppress(Exception):
                ray.kill(s.actor, no_restart=True)
        self._flx_refs.clear()
        self._input_refs.clear()
        if self._connected_here and ray.is_initialized():
            ray.shutdown()
            self._connected_here = False

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- the ShotBackend protocol ----------------------------------------------------------------------
    def run(
        self,
        shots,
        job,
        on_result: Callable,
        should_stop: Callable[[], bool],
        *,
        on_start: Callable | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> None:
        """Run one stage's shots on the actors; `on_result(shot, ShotResult | ShotFailure, staging)` is called on
        the driver (this thread) for each shot as it ends, with the complete staging folder to commit.

        `on_start(shot)` (optional) is called for every attempt as it is sent to an actor, with `self.worker` set
        to that actor's name; `on_step(step, steps)` (optional) gets the polled step progress of the shot sent
        last. A `should_stop()` stops the running shots at their next step (they end as retryable failures)."""
        if not shots:
            return
        self.connect()
        ray = _ray()
        deaths = _death_errors(ray)
        chars = self._character_refs(job)
        queue: deque[_Attempt] = deque(_Attempt(s) for s in shots)
        self._ensure_actors(len(queue))
        stopping = False
        no_actor_since: float | None = None
        while queue or self._running:
            if not stopping and should_stop():
                stopping = self._stop_all(queue)
            while queue and self._idle:
                keep = sorted({t.shot.preset for t in queue if t.shot.preset})
                task = queue.popleft()
                try:
                    sent, inputs = self._ship_inputs(task)
                except EngineError as e:  # a missing or oversized input file: the shot's own failure
                    on_result(task.shot, self._failure(str(e)), None)
                    continue
                self._dispatch(task, sent, inputs, self._idle.pop(0), chars, job, keep, on_start)
            if queue and not self._running and not self._idle:
                no_actor_since = no_actor_since or time.monotonic()
                failed_starts = len(self._start_errors) >= MAX_START_FAILURES
                if failed_starts or time.monotonic() - no_actor_since > self.start_timeout_s:
                    reason = self._no_worker_reason()
                    for task in queue:
                        on_result(task.shot, self._failure(reason), None)
                    queue.clear()
                    break
                if not self._starting:
                    self._ensure_actors(len(queue))
            else:
                no_actor_since = None
            refs = [*self._running, *self._starting]
            if not refs:
                time.sleep(self.poll_s)
                continue
            ready, _ = ray.wait(refs, num_returns=1, timeout=self.poll_s)
            for ref in ready:
                if ref in self._starting:
                    self._started(ref, deaths)
                else:
                    self._collect(ref, queue, on_result, deaths, job, stopping=stopping)
            if self._poll_progress(ray) and on_step is not None and not stopping and self._report_step(on_step):
                stopping = self._stop_all(queue)
        self._input_refs.clear()  # this stage's input files: no later shot needs them

    # ----- internals ---------------------------------------------------------------------------------------
    def _character_refs(self, job) -> dict[str, dict[str, Any]]:
        """alias -> what an actor needs to get the version: the bytes go to the object store once per content."""
        import hashlib

        ray = _ray()
        out = {}
        for alias, p in (getattr(job, "characters", None) or {}).items():
            sha = hashlib.sha256(p.flx).hexdigest()  # of the bytes that travel (checked on arrival)
            if sha not in self._flx_refs:
                self._flx_refs[sha] = ray.put(p.flx)
            out[alias] = {"name": p.name, "id": p.character_id, "version": p.version, "sha256": sha,
                          "ref": self._flx_refs[sha]}  # fmt: skip
        return out

    def _started(self, ref, deaths) -> None:
        ray = _ray()
        slot = self._starting.pop(ref)
        try:
            info = ray.get(ref)
        except deaths as e:  # its node went away, or the constructor failed (a bad setting, FLX not installed)
            self._start_errors.append(_start_error(e))
            return
        self._start_errors.clear()
        with self._lock:
            slot.info = info
            slot.name = f"ray:{info['host']}:{info['pid']}"
            self._idle.append(slot)

    def _ship_inputs(self, task: _Attempt):
        """(the shot as the actor gets it, its input files as Ray objects). Shared mode sends paths as they are;
        bytes mode sends each file the shot reads (once per content) and the actor points the shot at its copies.
        A score shot's media globs are expanded here, on the driver, where the batch's own renders are."""
        import hashlib

        shot = task.shot
        if shot.kind == "score" and isinstance(shot.params.get("media"), list):
            from engine.jobs.specs import media_files

            shot = replace(shot, params={**shot.params, "media": [str(p) for p in media_files(shot.params["media"])]})
        if self.output_mode == "shared":
            return shot, {}
        ray = _ray()
        inputs: dict[str, dict[str, Any]] = {}
        total = 0
        for path in _input_paths(shot.kind, shot.params):
            p = Path(path)
            if p.is_dir():
                found = sorted(f for f in p.rglob("*") if f.is_file() and not f.is_symlink())[: MAX_INPUT_FILES + 1]
                if len(found) > MAX_INPUT_FILES:
                    raise InputError(f"'{p}' holds over {MAX_INPUT_FILES} files: use --ray-output shared for it")
                files = {f.relative_to(p).as_posix(): f for f in found}
            elif p.is_file():
                files = {p.name: p}
            else:
                continue  # the shot itself names what is missing, as it would on the driver
            refs = {}
            for rel, f in files.items():
                data = f.read_bytes()
                total += len(data)
                if total > MAX_INPUT_BYTES:
                    raise InputError(
                        f"shot '{shot.shot_id}' reads over {MAX_INPUT_BYTES >> 30} GiB of input files: mount them on "
                        "every worker and use --ray-output shared"
                    )
                sha = hashlib.sha256(data).hexdigest()
                if sha not in self._input_refs:
                    self._input_refs[sha] = ray.put(data)
                refs[rel] = self._input_refs[sha]
            inputs[path] = {"dir": p.is_dir(), "files": refs}
        return shot, inputs

    def _dispatch(self, task: _Attempt, sent, inputs, slot: _Slot, chars: dict, job, keep: list[str], on_start):
        from engine.jobs.runner import clean_staging

        task.attempts += 1
        shot = task.shot
        payload = {a: chars[a] for a in shot.aliases if a in chars}
        staging = clean_staging(Path(job.out_dir), shot) if self.output_mode == "shared" else None
        if on_start is not None:
            self.worker = slot.name
            on_start(shot)
        ref = slot.actor.run_shot.remote(sent, payload, str(staging) if staging else None, task.attempts, keep, inputs)
        with self._lock:
            self._running[ref] = _Running(slot, task, staging, time.time())

    def _stop_all(self, queue: deque) -> bool:
        """A cancel: shots not sent stay pending (no result); running ones stop at their next step."""
        queue.clear()
        for r in self._running.values():
            with contextlib.suppress(Exception):
                r.slot.actor.stop.remote()
        return True

    def _collect(self, ref, queue: deque, on_result: Callable, deaths, job, *, stopping: bool = False) -> None:
        ray = _ray()
        with self._lock:
            run = self._running.pop(ref)
        task, slot = run.task, run.slot
        try:
            reply = ray.get(ref)
        except deaths as e:
            self._bury(slot, task, e)
            if stopping:
                on_result(
                    task.shot, self._failure("cancelled (its Ray worker died as it stopped)", retryable=True), None
                )
            elif task.attempts <= self.max_retries:
                queue.appendleft(task)  # first in line for the next live actor
            else:
                on_result(task.shot, self._failure(self._death_reason(task)), None)
            if len(self._idle) + len(self._starting) + len(self._running) < self._target:
                self._start_actor()  # a replacement, placed by Ray when resources allow
            return
        except ray.exceptions.RayTaskError as e:  # not one of the runner's boundary errors: not retried
            with self._lock:
                self._idle.append(slot)
            cause = e.cause if getattr(e, "cause", None) is not None else e
            on_result(task.shot, self._failure(f"{type(cause).__name__}: {_one_line(str(cause), 300)}"), None)
            return
        with self._lock:
            self._idle.append(slot)
        self.worker = slot.name  # what the runner records as the shot's worker
        if reply["status"] == "cancelled":
            on_result(task.shot, self._failure(reply["error"], retryable=True), None)
            return
        if reply["status"] == "failed":
            on_result(task.shot, self._failure(reply["error"]), None)
            return
        try:
            result, staging = self._finish(task, run, reply, job, slot)
        except EngineError as e:
            on_result(task.shot, self._failure(str(e)), None)
            return
        on_result(task.shot, result, staging)

    def _bury(self, slot: _Slot, task: _Attempt, err: BaseException) -> None:
        """Forget a dead actor (and make sure Ray does not bring it back)."""
        ray = _ray()
        task.deaths.append(f"{slot.name or 'an actor'}: {type(err).__name__}")
        with contextlib.suppress(Exception):
            ray.kill(slot.actor, no_restart=True)

    def _death_reason(self, task: _Attempt) -> str:
        return (
            f"its Ray worker died {len(task.deaths)} time(s) ({'; '.join(task.deaths[-3:])}), {task.attempts} "
            "attempt(s) in all: see `ray logs` on the worker machine (out of memory?)"
        )

    def _no_worker_reason(self) -> str:
        if self._start_errors:
            return (
                f"no FLX worker could start on Ray ({len(self._start_errors)} tries): {self._start_errors[-1]}: check "
                "that every worker machine has this checkout installed (`pip install -e '.[distributed]'`)"
            )
        return (
            f"no live Ray worker for {self.start_timeout_s:.0f} s (each needs {self._actor_resources}): check "
            "`ray status` and the workers' logs"
        )

    def _poll_progress(self, ray) -> bool:
        """Ask busy actors for their step (one outstanding call each). True when a new answer arrived."""
        changed = False
        for r in list(self._running.values()):
            slot = r.slot
            if slot.progress_ref is not None:
                done, _ = ray.wait([slot.progress_ref], timeout=0)
                if not done:
                    continue
                with contextlib.suppress(Exception):  # a dead actor's call fails; its shot's ref says so
                    new = ray.get(slot.progress_ref)
                    changed = changed or new != slot.progress
                    slot.progress = new
                slot.progress_ref = None
            with contextlib.suppress(Exception):
                slot.progress_ref = slot.actor.progress.remote()
        return changed

    def _report_step(self, on_step) -> bool:
        """Forward the newest shot's progress (the runner's heartbeat). True when the runner asked to stop."""
        latest = max(self._running.values(), key=lambda r: r.started, default=None)
        p = latest.slot.progress if latest is not None else None
        if not p or p[0] != latest.task.shot.shot_id or not p[2]:
            return False
        try:
            on_step(p[1], p[2])
        except JobCancelled:
            return True
        return False

    # ----- results -------------------------------------------------------------------------------------
    def _failure(self, reason: str, *, retryable: bool = False):
        from engine.jobs.runner import ShotFailure

        return ShotFailure(reason, retryable=retryable)

    def _finish(self, task: _Attempt, run: _Running, reply: dict, job, slot: _Slot):
        """(ShotResult, the complete staging folder) of a successful attempt."""
        from engine.jobs.runner import ShotResult, clean_staging

        if run.staging is not None:  # shared: the actor wrote the runner's staging folder itself
            from engine._core.atomic import TEMP_SUFFIX

            staging = run.staging
            for tmp in staging.rglob(f"*{TEMP_SUFFIX}"):  # a killed attempt's temp (its pid was on another machine)
                with contextlib.suppress(OSError):
                    tmp.unlink()
            missing = [f for f in reply["files"] if not (staging / f).is_file()]
            if missing:
                raise EngineError(
                    f"shared output mode: the worker wrote {missing[0]!r} but the driver does not see it under "
                    f"{staging}: mount the output folder at the same path on every machine, or use bytes mode"
                )
        else:
            staging = _write_folder(clean_staging(Path(job.out_dir), task.shot), reply.get("data") or {})
        produced = {}
        for alias, data in (reply.get("produced") or {}).items():
            produced[alias] = self._driver_engine().characters.import_bytes(data, source=f"{task.shot.shot_id}.flx").id
        report = dict(reply.get("report") or {})
        report["ray"] = {"worker": slot.name, "attempts": task.attempts, "died": list(task.deaths)}
        result = ShotResult(files=list(reply["files"]), report=report, score=reply.get("score"), produced=produced)
        return result, staging

    def _driver_engine(self) -> Engine:
        if self.engine is None:
            from engine.api import Engine

            if self.settings is None:
                raise EngineError("pack and train shots on Ray need the driver's Engine: RayBackend(..., engine=...)")
            self.engine = Engine(self.settings)
        return self.engine


def _write_folder(dest: Path, files: dict[str, bytes]) -> Path:
    """Write `files` (relative path -> bytes) as the folder `dest`: into a hidden sibling first, then one rename,
    so `dest` is either absent or complete."""
    from engine._core.atomic import atomic_write_bytes

    dest = Path(dest)
    part = dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(6)}.part")
    try:
        part.mkdir(parents=True)
        root = part.resolve()
        for rel, data in files.items():
            target = (part / rel).resolve()
            if root not in target.parents:
                raise EngineError(f"a Ray worker returned a file outside its shot folder: {rel!r}")
            atomic_write_bytes(target, data)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(part, dest)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return dest
