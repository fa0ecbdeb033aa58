"""Running a batch: plan each shot (its content key), skip what is finished, run the rest on one warm Engine (or a
Ray pool), and commit every result so a `kill -9` at any moment loses nothing.

A shot runs in `<out>/.staging/<shot id>-<key>/`, a folder only it writes. When it has finished, its `shot.json`
(key, files, report) is written there and the folder is renamed to `<out>/<shot id>/` in one step; only then does
the store mark the shot done. So the output folder only ever holds complete shots: a killed run leaves at most a
staging folder, which the next run of the same key continues in (sequence segments and LoRA checkpoints resume
from it) and which is never listed in the manifest. A shot whose folder was renamed but whose row was not updated
(killed between the two) is recognised by the key in its `shot.json` and adopted, not rendered again.

Content keys hash what makes the output: the kind's resolved parameters (seed included), each character's id,
version and sha256, the sha256 digests of the preset's weights components, and `JOB_FORMAT`. Character versions
that the batch itself stored (a pack, a LoRA) are traced back to the version the batch started from, so running
the same job file again does not see its own packs as a change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine._core.errors import EngineError, InputError, JobCancelled

from .specs import JOB_FORMAT, STAGES, JobFile, JobShot, shot_spec, shot_values
from .store import HEARTBEAT_S

if TYPE_CHECKING:
    from engine.api import Engine

    from .store import BatchInfo, JobStore

STAGING = ".staging"
SHOT_FILE = "shot.json"
MANIFEST = "manifest.json"
MANIFEST_EVERY_S = 2.0  # the manifest is rewritten at most this often while a batch runs, and at its end


@dataclass(frozen=True)
class PlannedShot:
    """One shot ready to run anywhere (driver or Ray worker): plain data, picklable and JSON-able."""

    batch_id: str
    shot_id: str
    kind: str
    key: str
    preset: str | None
    stage: int
    position: int
    stem: str
    params: dict[str, Any]  # the kind schema's values, characters given by alias
    aliases: tuple[str, ...]


@dataclass
class ShotResult:
    files: list[str]  # relative to the staging folder
    report: dict[str, Any]
    score: float | None = None
    produced: dict[str, str] = field(default_factory=dict)  # alias -> library name of the version it stored


@dataclass
class ShotFailure:
    error: str  # one line
    retryable: bool = False


@dataclass
class CharacterPayload:
    """A character as it travels to a worker: its `.flx` bytes and identity."""

    alias: str
    name: str
    character_id: str
    version: int
    sha256: str
    flx: bytes = field(repr=False)


@dataclass
class JobContextData:
    characters: dict[str, CharacterPayload]
    out_dir: Path
    staging_root: Path
    names: dict[str, str] = field(default_factory=dict)  # alias -> what the driver's own Engine opens


class ShotBackend(Protocol):
    """Where shots run. The runner calls `run` once per stage and commits each result as it arrives (on the
    runner's thread). `on_start(shot)` before each attempt (the backend's `worker` attribute, if any, names where
    it runs), `on_step(step, steps)` for the shot sent last, `should_stop()` polled between steps and shots."""

    def run(
        self,
        shots: list[PlannedShot],
        job: JobContextData,
        on_result: Callable[[PlannedShot, ShotResult | ShotFailure, Path | None], None],
        should_stop: Callable[[], bool],
        *,
        on_start: Callable[[PlannedShot], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> None: ...


# ----- planning ---------------------------------------------------------------------------------------
def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def shot_preset(job: JobFile, shot: JobShot) -> str | None:
    values = {**job.defaults.get(shot.kind, {}), **shot.params()}
    if shot.kind == "pack":
        from engine.shots.pack import DEFAULT_PACK_PRESET

        return values.get("preset") or DEFAULT_PACK_PRESET
    if shot.kind == "train":
        from engine.training.spec import TrainSpec

        return values.get("preset") or TrainSpec.model_fields["preset"].default
    return values.get("preset")


def model_digests(engine: Engine, preset: str | None) -> dict[str, str | None]:
    """{component id: sha256 digest of its locked files} of a preset (what the key says about the models)."""
    if not preset:
        return {}
    p = engine.preset(preset)
    return {cid: engine.store.component_digest(cid) for cid in sorted(set(p.components.ids().values()))}


def character_identity(engine: Engine, spec: str) -> dict[str, Any]:
    """{id, version, sha256, name} of a library character or a `.flx` file (the file's own bytes' sha256)."""
    p = Path(spec)
    if p.suffix.lower() == ".flx" or p.is_file():
        from engine.characters import read_flx

        ch = read_flx(p).character
        return {"id": ch.id, "version": ch.version, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                "name": ch.name, "file": str(p)}  # fmt: skip
    with engine.library() as lib:
        cid, version, sha = lib.head(spec)
        name = lib.summary(cid).name
    return {"id": cid, "version": version, "sha256": sha, "name": name}


def version_sha(engine: Engine, character_id: str, version: int) -> str:
    with engine.library() as lib:
        for v in lib.log(character_id):
            if v.version == version:
                return v.sha256
    return ""


class Planner:
    """Content keys for a batch's shots, with the character versions its own earlier shots made."""

    def __init__(self, engine: Engine, store: JobStore, batch_id: str, job: JobFile):
        self.engine, self.store, self.batch_id, self.job = engine, store, batch_id, job
        self.produced = store.produced_by(batch_id)
        self.current: dict[str, dict[str, Any]] = {}  # alias -> identity the next shot sees
        self.missing: dict[str, str] = {}  # alias -> why it cannot be opened (its shots fail with that)
        self._models: dict[str | None, dict] = {}  # preset -> its components' digests (read once per run)

    def _digests(self, preset: str | None) -> dict[str, str | None]:
        if preset not in self._models:
            self._models[preset] = model_digests(self.engine, preset)
        return self._models[preset]

    def start(self) -> None:
        """Each character as the batch found it: the head, traced back through versions this batch stored."""
        for alias, spec in self.job.characters.items():
            try:
                ident = character_identity(self.engine, spec)
            except EngineError as e:
                self.missing[alias] = f"character '{alias}': {e}"
                continue
            version = ident["version"]
            while (ident["id"], version) in self.produced:
                version = self.produced[(ident["id"], version)]["from_version"]
            if version != ident["version"]:
                ident = {**ident, "version": version, "sha256": version_sha(self.engine, ident["id"], version)}
            self.current[alias] = ident

    def refresh(self, alias: str) -> None:
        """After a shot stored a new version of `alias`: later shots see the library's head."""
        self.current[alias] = character_identity(self.engine, self.job.characters[alias])

    def advance(self, alias: str, version: int) -> None:
        """A skipped (finished) pack/train shot: later shots see the version it stored back then."""
        ident = self.current[alias]
        self.current[alias] = {**ident, "version": version, "sha256": version_sha(self.engine, ident["id"], version)}

    def plan(self, shot: JobShot) -> PlannedShot:
        values = shot_values(self.job, shot)
        shot_spec(self.job, shot)  # checked again: the file was valid at submit, the schema may be stricter now
        preset = shot_preset(self.job, shot)
        aliases = list(shot.aliases())
        if shot.kind == "sequence":
            aliases += [
                s["character"] for s in values.get("shots") or [] if isinstance(s, dict) and s.get("character")
            ]
        aliases = list(dict.fromkeys(aliases))
        for a in aliases:
            if a in self.missing:
                raise InputError(self.missing[a])
        key_parts = {
            "format": JOB_FORMAT,
            "kind": shot.kind,
            "stem": shot.output or shot.id,
            "values": values,
            "characters": {a: {k: self.current[a][k] for k in ("id", "version", "sha256")} for a in aliases},
            "models": self._digests(preset),
            "inputs": _input_files(self.job, shot, values),
        }
        return PlannedShot(
            batch_id=self.batch_id,
            shot_id=shot.id,
            kind=shot.kind,
            key=_sha(key_parts)[:24],
            preset=preset,
            stage=STAGES[shot.kind],
            position=self.job.shots.index(shot),
            stem=shot.output or shot.id,
            params=values,
            aliases=tuple(aliases),
        )


def _input_files(job: JobFile, shot: JobShot, values: dict) -> dict[str, str]:
    """sha256 of the files a shot reads (start/end images, audio, score media): a changed file is a changed shot."""
    paths: list[str] = []
    for k in ("start_image", "end_image", "audio"):
        if isinstance(values.get(k), str):
            paths.append(values[k])
    for s in values.get("shots") or [] if shot.kind == "sequence" else []:
        if isinstance(s, dict):
            paths += [s[k] for k in ("start_image", "end_image") if isinstance(s.get(k), str)]
    if shot.kind == "score":
        from .specs import media_files

        with contextlib.suppress(InputError):
            paths += [str(p) for p in media_files(values.get("media") or [])]
    out = {}
    for p in paths:
        try:
            st = os.stat(p)
            out[p] = f"{st.st_size}:{st.st_mtime_ns}"  # size + mtime: cheap, and what a re-export changes
        except OSError:
            out[p] = "missing"
    return out


def order_stage(shots: list[PlannedShot]) -> list[PlannedShot]:
    """Stage 0 in file order (a pack before the LoRA trained on it); later stages grouped by preset, presets in
    order of first appearance, file order inside a group: each model loads once."""
    if not shots or shots[0].stage == 0:
        return sorted(shots, key=lambda s: s.position)
    first: dict[str | None, int] = {}
    for s in sorted(shots, key=lambda s: s.position):
        first.setdefault(s.preset, s.position)
    return sorted(shots, key=lambda s: (first[s.preset], s.position))


# ----- running one shot ------------------------------------------------------------------------------
def _named(shot: PlannedShot, names: dict[str, str]) -> dict[str, Any]:
    """The shot's values with every character alias replaced by what this Engine opens."""
    v = dict(shot.params)
    name = lambda a: names.get(a, a)  # noqa: E731
    if shot.kind == "still":
        v["characters"] = [name(a) for a in v.get("characters") or []]
    if shot.kind in ("video", "sequence") and v.get("character"):
        v["character"] = name(v["character"])
    if shot.kind == "sequence":
        v["shots"] = [
            {**s, "character": name(s["character"])} if isinstance(s, dict) and s.get("character") else s
            for s in v.get("shots") or []
        ]
    return v


def _files(folder: Path) -> list[str]:
    from engine._core.atomic import TEMP_SUFFIX

    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink() and not p.name.endswith(TEMP_SUFFIX) and p.name != SHOT_FILE:
            out.append(p.relative_to(folder).as_posix())
    return out


def _rel(value: Any, root: Path) -> Any:
    """Paths inside `root` in a report, made relative to it (the folder is renamed after the shot)."""
    if isinstance(value, dict):
        return {k: _rel(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rel(v, root) for v in value]
    if isinstance(value, (str, Path)):
        s = str(value)
        r = str(root)
        if s.startswith(r + os.sep):
            return s[len(r) + 1 :]
    return value


def execute_shot(
    engine: Engine,
    shot: PlannedShot,
    staging: Path,
    *,
    characters: dict[str, str],
    on_step: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ShotResult:
    """Run one shot on `engine`, writing only under `staging`. `characters` maps the shot's aliases to library
    names or `.flx` paths this Engine can open. `on_step(step, steps)` sees every denoising (or training) step
    and may raise `JobCancelled`; training polls `should_stop` and saves a checkpoint before it stops."""
    from engine._core.progress import step_progress

    from .specs import PackArgs, ScoreArgs, media_files

    staging = Path(staging)
    staging.mkdir(parents=True, exist_ok=True)
    values = _named(shot, characters)
    stem = shot.stem
    produced: dict[str, str] = {}
    score = None
    with step_progress(on_step):
        if shot.kind == "still":
            outcome = engine.still(out=staging / f"{stem}.png", **values)
            best = outcome.best
            score = best.score.score if best.score is not None else None
            report = {
                "best": best.path.name,
                "candidates": [
                    {"file": c.path.name, "seed": c.seed, "score": c.score.score if c.score else None}
                    for c in outcome.candidates
                ],
            }
        elif shot.kind == "video":
            preset, prompt = values.pop("preset"), values.pop("prompt")
            outcome = engine.video(preset, prompt, out=staging / f"{stem}.mp4", **values)
            score = outcome.score.overall.score if outcome.score is not None else None
            report = {"file": outcome.path.name, "timing": outcome.timing}
            if outcome.score is not None:
                from engine._core.atomic import atomic_write_text

                atomic_write_text(staging / f"{stem}.score.json", outcome.score.model_dump_json(indent=1))
        elif shot.kind == "sequence":
            from engine.shots.sequence import SequenceSpec

            result = engine.sequence(SequenceSpec.model_validate(values), out=staging / f"{stem}.mp4")
            overall = getattr(getattr(result.report, "overall", None), "score", None)
            score = overall
            report = {"file": result.path.name, "report": result.report_path.name, "segments": result.segments}
        elif shot.kind == "pack":
            args = PackArgs.model_validate(values)
            alias = shot.aliases[0]
            result = engine.pack(
                characters[alias], out_dir=staging, candidates=args.candidates, preset=shot.preset,
                seed=args.seed, shots=args.shots,
            )  # fmt: skip
            produced[alias] = characters[alias]
            scores = [s for r in result.shots for s in [_best_score(r)] if s is not None]
            score = sum(scores) / len(scores) if scores else None
            report = {"version": result.character.version, "sheet": result.sheet.name, "shots": result.shots}
        elif shot.kind == "train":
            alias = shot.aliases[0]
            outcome = engine.train(
                characters[alias],
                out_dir=staging,
                progress=(lambda step, total, *_: on_step(step, total)) if on_step else None,
                should_stop=should_stop,
                **values,
            )
            if outcome.character is None:
                raise JobCancelled(f"training of shot '{shot.shot_id}' stopped: run the batch again to resume it")
            produced[alias] = characters[alias]
            info = outcome.result.info
            score = info.get("best_likeness")
            report = {"version": outcome.character.version, "info": info, "paths": outcome.result.paths}
        elif shot.kind == "score":
            args = ScoreArgs.model_validate(values)
            job_media = media_files(args.media)
            rep = engine.score(
                job_media,
                character=characters[shot.aliases[0]],
                protocol=args.protocol,
                encoder_id=args.encoder,
                sequence=args.sequence,
            )
            from engine._core.atomic import atomic_write_text
            from engine.scoring.render import write_plot

            atomic_write_text(staging / f"{stem}.json", rep.model_dump_json(indent=1))
            with contextlib.suppress(EngineError, ValueError):
                write_plot(rep, staging / f"{stem}.png")
            score = rep.overall.score
            report = {
                "file": f"{stem}.json",
                "media": [str(p) for p in job_media],
                "overall": rep.overall.model_dump(),
            }
        else:  # the schema allows no other kind
            raise InputError(f"unknown shot kind '{shot.kind}'")
    return ShotResult(files=_files(staging), report=_rel(report, staging), score=score, produced=produced)


def _best_score(record: dict) -> float | None:
    best = record.get("best")
    for c in record.get("candidates") or []:
        if c.get("path") == best:
            return c.get("score")
    return None


# ----- committing -------------------------------------------------------------------------------------
def staging_dir(out_dir: Path, shot: PlannedShot) -> Path:
    return Path(out_dir) / STAGING / f"{shot.shot_id}-{shot.key}"


def clean_staging(out_dir: Path, shot: PlannedShot) -> Path:
    """This shot's staging folder (kept when it is from an unfinished run of the same key: sequences and training
    resume there); older keys' folders of the same shot are removed."""
    root = Path(out_dir) / STAGING
    keep = staging_dir(out_dir, shot)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(f"{shot.shot_id}-") and p != keep and p.name[len(shot.shot_id) + 1 :].isalnum():
                shutil.rmtree(p, ignore_errors=True)
    return keep


def read_shot_file(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / SHOT_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def commit_shot(out_dir: Path, shot: PlannedShot, staging: Path, result: ShotResult) -> dict:
    """Write `shot.json` into the staging folder, then rename it to `<out>/<shot id>/` (replacing an older
    version of the shot in one step). Returns the shot record."""
    from engine._core.atomic import _fsync_dir

    record = {
        "batch": shot.batch_id,
        "shot": shot.shot_id,
        "kind": shot.kind,
        "key": shot.key,
        "preset": shot.preset,
        "parameters": shot.params,
        "files": result.files,
        "score": result.score,
        "report": result.report,
    }
    # the staging folder is this shot's alone and is only read after the rename below: a plain write is enough (a
    # crash mid-write leaves a staging folder nobody reads; the rename is what makes the shot visible)
    (staging / SHOT_FILE).write_text(json.dumps(record, indent=1, sort_keys=True, default=str), "utf-8")
    final = Path(out_dir) / shot.shot_id
    trash = None
    if final.exists() or final.is_symlink():
        trash = Path(out_dir) / STAGING / f".old-{shot.shot_id}-{secrets.token_hex(4)}"
        os.replace(final, trash)
    os.replace(staging, final)
    _fsync_dir(Path(out_dir))
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return record


MANIFEST_METADATA = ("kind", "preset", "seed", "prompt", "negative_prompt", "character", "created_at", "duration_s",
                     "commercial_use", "unverified")  # fmt: skip


def _file_metadata(path: Path) -> dict | None:
    """What the manifest repeats of a render's own metadata (the full record stays in the file: PNG text chunks, the
    MP4's sidecar): seed, prompt, character id + version, and each model component's id and sha256."""
    full = None
    if path.suffix == ".png":
        from engine.outputs import read_png_metadata

        with contextlib.suppress(Exception):  # a plot or contact sheet has no FLX metadata
            full = read_png_metadata(path) or None
    elif path.suffix == ".mp4":
        with contextlib.suppress(OSError, ValueError):
            full = json.loads(path.with_suffix(".json").read_text("utf-8"))
    if not isinstance(full, dict):
        return None
    out = {k: full[k] for k in MANIFEST_METADATA if k in full}
    models = full.get("models")
    if isinstance(models, dict):
        out["models"] = {
            slot: {k: m.get(k) for k in ("id", "sha256", "revision")}
            for slot, m in models.items()
            if isinstance(m, dict)
        }
    return out


def write_manifest(out_dir: Path, batch: BatchInfo, records: dict[str, dict]) -> Path:
    """`<out>/manifest.json`: every file of every finished shot with its parameters, score, key and metadata.
    Each file's metadata is read once and kept in its shot's record (`records` is the runner's, per run)."""
    from engine._core.atomic import atomic_write_text

    files = []
    for s in batch.shots:
        rec = records.get(s.id)
        if s.status != "done" or rec is None:
            continue
        metadata = rec.setdefault("_metadata", {})
        for f in rec["files"]:
            if f not in metadata:
                path = Path(out_dir) / s.id / f
                metadata[f] = _file_metadata(path) if path.suffix in (".png", ".mp4") else None
            meta = metadata[f]
            files.append(
                {
                    "path": f"{s.id}/{f}",
                    "shot": s.id,
                    "kind": s.kind,
                    "key": rec["key"],
                    "parameters": rec["parameters"],
                    "score": rec["score"],
                    "metadata": meta,
                }
            )
    doc = {
        "batch": batch.id,
        "name": batch.name,
        "status": batch.status,
        "shots": {s.id: {"status": s.status, "key": s.key, "score": s.score, "error": s.error} for s in batch.shots},
        "files": files,
    }
    return atomic_write_text(Path(out_dir) / MANIFEST, json.dumps(doc, indent=1, sort_keys=True, default=str))


# ----- the batch --------------------------------------------------------------------------------------
class InProcessBackend:
    """The embedded queue: shots run one after another on the runner's own warm Engine."""

    needs_character_bytes = False  # it opens the job's characters itself (remote backends get `.flx` bytes)

    def __init__(self, engine: Engine, *, worker: str = "local"):
        self.engine = engine
        self.worker = worker

    def run(self, shots, job, on_result, should_stop, *, on_start=None, on_step=None):
        names = dict(job.names)  # library characters by id, `.flx` characters by their path
        for i, shot in enumerate(shots):
            if should_stop():
                return
            if shot.preset and shot.preset not in self.engine.loaded_presets():
                # about to load another model: drop the ones no remaining shot of this stage uses
                self.engine.release_pipelines({s.preset for s in shots[i:] if s.preset})
            staging = clean_staging(job.out_dir, shot)
            if on_start is not None:
                on_start(shot)
            try:
                result = execute_shot(
                    self.engine, shot, staging, characters=names, on_step=on_step, should_stop=should_stop
                )
            except JobCancelled as e:
                on_result(shot, ShotFailure(str(e) or "cancelled", retryable=True), None)
                return
            except EngineError as e:
                on_result(shot, ShotFailure(str(e)), None)
                continue
            except (MemoryError, RuntimeError, OSError, ValueError, TypeError, KeyError, IndexError) as e:
                # the runner's boundary: one shot's unexpected failure is recorded, the batch goes on
                on_result(shot, ShotFailure(f"{type(e).__name__}: {e}"), None)
                continue
            on_result(shot, result, staging)


def run_batch(
    engine: Engine,
    store: JobStore,
    batch_id: str,
    *,
    retry_failed: bool = False,
    backend: ShotBackend | None = None,
    progress: Callable[[str, dict], None] | None = None,
    runner: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BatchInfo:
    """Run (or continue) a batch. `progress(event, data)` gets `plan` (shots, skipped), `start` (shot),
    `step` (shot, step, steps, eta_s) and `end` (shot, status, error, score) for a front end's bars.

    Failures do not stop the batch; the result lists them. A cancel (`JobStore.cancel`, or `should_stop()` turning
    true, e.g. on Ctrl-C) stops at the running shot's next step; training saves a checkpoint first.
    """
    import socket

    emit = progress or (lambda event, data: None)
    runner = runner or f"{socket.gethostname()}:{os.getpid()}"
    store.claim(batch_id, runner)
    job = store.document(batch_id)
    info = store.batch(batch_id)
    out_dir = Path(info.out_dir)
    from engine._core.atomic import ensure_writable_dir

    ensure_writable_dir(out_dir, what="batch output folder", fix="choose another --out folder")
    records: dict[str, dict] = {}
    for s in info.shots:
        rec = read_shot_file(out_dir / s.id)
        if rec is not None:
            records[s.id] = rec
    stop = {"cancel": False}
    asked = should_stop

    last = {"t": 0.0, "manifest": 0.0, "beat": time.perf_counter()}

    def should_stop() -> bool:
        """Cancelled (store or Ctrl-C)? Backends poll it between steps and shots; it also keeps the runner's
        heartbeat fresh while a long stage runs remotely (else another worker would think this runner died)."""
        if time.perf_counter() - last["beat"] >= HEARTBEAT_S:
            last["beat"] = time.perf_counter()
            store.heartbeat(batch_id)
        if not stop["cancel"] and (store.cancel_requested(batch_id) or (asked is not None and asked())):
            stop["cancel"] = True
        return stop["cancel"]

    started: dict[str, float] = {}  # shot id -> when it was sent (several run at once on Ray)
    current_shot: dict[str, Any] = {"id": None, "kind": None}  # the shot sent last: what the step bar shows

    def eta_of(step: int, steps: int) -> float | None:
        t0 = started.get(current_shot["id"])
        if step <= 0 or t0 is None:
            return None
        return round((time.perf_counter() - t0) / step * (steps - step), 1)

    def on_step(step: int, steps: int) -> None:
        """Steps of the shot sent last; may raise `JobCancelled` to stop it (training stops by `should_stop`)."""
        if should_stop() and current_shot["kind"] != "train":  # one SELECT; training checkpoints first, then stops
            raise JobCancelled("cancelled")
        now = time.perf_counter()
        if now - last["t"] >= 0.5 and step < steps:  # the shot's end is recorded by its own row
            last["t"] = now
            store.progress(batch_id, current_shot["id"], step, steps, eta_of(step, steps))
            last["beat"] = time.perf_counter()
        emit("step", {"shot": current_shot["id"], "step": step, "steps": steps, "eta_s": eta_of(step, steps)})

    def on_start(shot: PlannedShot) -> None:
        current_shot["id"], current_shot["kind"] = shot.shot_id, shot.kind
        started[shot.shot_id] = time.perf_counter()
        store.start_shot(batch_id, shot.shot_id, shot.key, getattr(backend, "worker", None) or runner)
        emit("start", {"shot": shot.shot_id, "kind": shot.kind, "preset": shot.preset})

    planner = Planner(engine, store, batch_id, job)
    planner.start()
    backend = backend or InProcessBackend(engine)

    def on_result(shot: PlannedShot, outcome, staging: Path | None) -> None:
        if isinstance(outcome, ShotFailure):
            status = "cancelled" if (stop["cancel"] and outcome.retryable) else "failed"
            store.end_shot(batch_id, shot.shot_id, status, key=shot.key, error=outcome.error)
            emit("end", {"shot": shot.shot_id, "status": status, "error": outcome.error})
            return
        produced = []
        for alias in outcome.produced:
            before = planner.current[alias]
            planner.refresh(alias)
            after = planner.current[alias]
            produced.append((after["id"], after["version"], before["version"]))
        rec = commit_shot(out_dir, shot, staging, outcome)
        records[shot.shot_id] = rec
        store.end_shot(
            batch_id, shot.shot_id, "done", key=shot.key, outputs=[f"{shot.shot_id}/{f}" for f in outcome.files],
            score=outcome.score, duration_s=_elapsed(started.pop(shot.shot_id, None)), produced=produced,
        )  # fmt: skip
        if time.perf_counter() - last["manifest"] >= MANIFEST_EVERY_S:  # and always at the end of the batch
            write_manifest(out_dir, store.batch(batch_id), records)
            last["manifest"] = time.perf_counter()
        emit("end", {"shot": shot.shot_id, "status": "done", "score": outcome.score})

    try:
        stage_shots = {k: [s for s in job.shots if STAGES[s.kind] == k] for k in (0, 1, 2)}
        # packs and LoRAs change the characters later shots (and later packs/LoRAs) use: each is planned only
        # after the one before it ran; a render stage is planned and ordered as a whole
        groups = [[s] for s in stage_shots[0]] + [stage_shots[1], stage_shots[2]]
        for group in groups:
            if not group:
                continue
            stage = STAGES[group[0].kind]
            todo: list[PlannedShot] = []
            for shot in group:
                try:
                    planned = planner.plan(shot)
                except EngineError as e:
                    store.end_shot(batch_id, shot.id, "failed", error=str(e))
                    emit("end", {"shot": shot.id, "status": "failed", "error": str(e)})
                    continue
                row = store.shot_row(batch_id, shot.id)
                rec = records.get(shot.id)
                done_before = rec is not None and rec.get("key") == planned.key
                if done_before and row["status"] != "done":  # renamed into place, then killed before the row
                    store.end_shot(batch_id, shot.id, "done", key=planned.key,
                                   outputs=[f"{shot.id}/{f}" for f in rec["files"]], score=rec.get("score"))  # fmt: skip
                if done_before:
                    emit("skip", {"shot": shot.id})
                    if shot.kind in ("pack", "train") and isinstance((rec.get("report") or {}).get("version"), int):
                        planner.advance(shot.aliases()[0], rec["report"]["version"])
                    continue
                if row["status"] == "failed" and row["key"] == planned.key and not retry_failed:
                    emit("end", {"shot": shot.id, "status": "failed", "error": row["error"], "earlier": True})
                    continue
                todo.append(planned)
            emit("plan", {"stage": stage, "shots": [s.shot_id for s in todo]})
            if not todo:
                continue
            payload = _payload(
                engine, job, planner, out_dir, with_bytes=getattr(backend, "needs_character_bytes", True)
            )
            backend.run(order_stage(todo), payload, on_result, should_stop, on_start=on_start, on_step=on_step)
            if should_stop():
                break
    except BaseException as e:  # a crash or Ctrl-C: the batch row says so; finished shots stay done
        with contextlib.suppress(EngineError, OSError):
            write_manifest(out_dir, store.batch(batch_id), records)
        store.finish(batch_id, "failed" if not isinstance(e, KeyboardInterrupt) else "cancelled", error=str(e)[:500])
        raise
    final = store.batch(batch_id)
    if stop["cancel"]:
        status = "cancelled"
    elif any(s.status == "failed" for s in final.shots):
        status = "failed"
    elif all(s.status == "done" for s in final.shots):
        status = "done"
    else:
        status = "failed"
    info = store.finish(batch_id, status)
    write_manifest(out_dir, info, records)
    return info


def _elapsed(t0: float | None) -> float | None:
    return None if t0 is None else round(time.perf_counter() - t0, 3)


def _is_flx(spec: str) -> bool:
    p = Path(spec)
    return p.suffix.lower() == ".flx" or p.is_file()


def _payload(engine: Engine, job: JobFile, planner: Planner, out_dir: Path, *, with_bytes: bool) -> JobContextData:
    """The job's characters for a stage: identities, what the driver opens, and (for remote workers) the `.flx`
    bytes of the version the stage uses."""
    chars: dict[str, CharacterPayload] = {}
    names: dict[str, str] = {}
    for alias, spec in job.characters.items():
        if alias in planner.missing:
            continue
        ident = planner.current.get(alias) or character_identity(engine, spec)
        data = character_bytes(engine, spec) if with_bytes else b""
        chars[alias] = CharacterPayload(alias, ident["name"], ident["id"], ident["version"], ident["sha256"], data)
        names[alias] = spec if _is_flx(spec) else ident["id"]
    return JobContextData(characters=chars, out_dir=out_dir, staging_root=out_dir / STAGING, names=names)


def character_bytes(engine: Engine, spec: str) -> bytes:
    """The `.flx` bytes of a job character (a library export, or the file itself): what a remote worker gets."""
    if _is_flx(spec):
        return Path(spec).read_bytes()
    return engine.characters.export_bytes(spec)


__all__ = [
    "CharacterPayload",
    "InProcessBackend",
    "JobContextData",
    "PlannedShot",
    "ShotBackend",
    "ShotFailure",
    "ShotResult",
    "character_bytes",
    "commit_shot",
    "execute_shot",
    "order_stage",
    "run_batch",
    "write_manifest",
]
