"""The driver side of the Ray tests, run by test_ray_backend.py inside a private network namespace.

    python tests/distributed/ray_driver.py CONFIG.json RESULTS.json

Checks that the namespace has no interface but `lo`, then runs the same job file three times, each on a fresh
driver home with the same characters imported: through the embedded queue, through `RayBackend` on a local
2-CPU Ray cluster (bytes mode), and again in shared mode while one actor's worker process is SIGKILLed in the
middle of a shot. Writes what the test asserts on (batch infos, per-file pixel digests, shot records, what is
left in the output folders) to RESULTS.json. The cluster is started here (`ray.init(address="local")` with a
private temp dir) and ended with `ray.shutdown()`; the test then kills whatever is left in the namespace by pid.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path


def interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def digests(out: Path) -> dict[str, str]:
    """relative path -> sha256 of the decoded pixels (PNG) or of the bytes, for every finished shot's file."""
    import numpy as np
    from PIL import Image

    found = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if not p.is_file() or rel.parts[0] == ".staging" or p.name in ("manifest.json", "shot.json"):
            continue
        if p.suffix == ".png":
            with Image.open(p) as im:
                data = np.asarray(im.convert("RGB")).tobytes()
        elif p.suffix == ".json":
            continue  # reports and sidecars hold paths and times
        else:
            data = p.read_bytes()
        found[rel.as_posix()] = hashlib.sha256(data).hexdigest()
    return found


def leftovers(out: Path) -> list[str]:
    """Anything that is not a finished shot's file: temps, partial folders, staging content."""
    bad = []
    for p in out.rglob("*"):
        rel = p.relative_to(out).as_posix()
        if p.name.endswith((".flx-tmp", ".part")) or ".part" in p.name:
            bad.append(rel)
        elif rel.startswith(".staging/"):
            bad.append(rel)
    return sorted(bad)


def fresh_engine(work: Path, name: str, cfg: dict):
    from engine._core.settings import EngineSettings
    from engine.api import Engine

    home = work / name / "home"
    eng = Engine(EngineSettings(home=home, weights_dir=cfg["weights_dir"], outputs_dir=work / name))
    for flx in cfg["characters"]:
        eng.characters.import_path(flx)
    return eng


def run_job(eng, cfg: dict, out: Path, backend=None, *, job: str | None = None):
    from engine.jobs.runner import run_batch
    from engine.jobs.specs import load_job
    from engine.jobs.store import JobStore, default_store_path

    job = job or cfg["job"]
    before = {c.name: c.latest_version for c in eng.characters.list()}
    started: list[str] = []

    def progress(event: str, data: dict) -> None:
        if event == "start":
            started.append(data["shot"])

    with JobStore(default_store_path(eng.settings)) as store:
        bid = store.submit(load_job(job), out_dir=out, source=job)
        t0 = time.perf_counter()
        info = run_batch(eng, store, bid, backend=backend, progress=progress)
        wall = time.perf_counter() - t0
    records = {}
    for s in info.shots:
        f = out / s.id / "shot.json"
        if f.is_file():
            records[s.id] = json.loads(f.read_text())
    versions = {c.name: c.latest_version for c in eng.characters.list()}
    return {
        "info": info.model_dump(mode="json"),
        "digests": digests(out),
        "leftovers": leftovers(out),
        "records": records,
        "versions_before": before,
        "versions": versions,
        "wall_s": wall,
        "started": started,
        # which media files the score shot's own report names: the worker's copies (bytes mode) or the originals
        "qc_read_copies": "/inputs/" in _read(out / "qc" / "qc.json"),
    }


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def kill_mid_shot(backend, shot_id: str, state: dict) -> None:
    """SIGKILL the worker process of the actor rendering `shot_id`, once it is two steps into the render."""
    while not state.get("stop"):
        for f in backend.in_flight():
            if f.shot_id == shot_id and f.attempt == 1 and f.step >= 2 and f.pid:
                os.kill(f.pid, signal.SIGKILL)
                state["killed"] = asdict(f)
                return
        time.sleep(0.01)


def cancel_mid_shot(backend, eng, shot_id: str, state: dict) -> None:
    """`flx batch cancel` (the store's cancel flag) while `shot_id` is two steps into its render on an actor."""
    from engine.jobs.store import JobStore, default_store_path

    while not state.get("stop"):
        for f in backend.in_flight():
            if f.shot_id == shot_id and f.step >= 2:
                with JobStore(default_store_path(eng.settings)) as store:
                    for b in store.batches():
                        store.cancel(b.id)
                state["seen"] = asdict(f)
                return
        time.sleep(0.01)


def main(cfg_path: str, results_path: str) -> int:
    cfg = json.loads(Path(cfg_path).read_text())
    work = Path(cfg["work"])
    results: dict = {"interfaces": interfaces()}
    # the proof the harness promises: nothing but loopback exists here, so no Ray connection can leave
    assert results["interfaces"] == ["lo"], results["interfaces"]

    results["embedded"] = run_job(fresh_engine(work, "embedded", cfg), cfg, work / "embedded" / "out")

    import ray

    from engine.distributed import RayBackend

    t0 = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=2,
        _temp_dir=cfg["ray_tmp"],
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    results["ray_start_s"] = time.perf_counter() - t0
    results["node_ip"] = ray.util.get_node_ip_address()
    try:
        eng = fresh_engine(work, "ray-bytes", cfg)
        backend = RayBackend(
            "auto", engine=eng, worker_home=str(work / "workers"), worker_settings={"weights_dir": cfg["weights_dir"]}
        )
        results["ray_bytes"] = run_job(eng, cfg, work / "ray-bytes" / "out", backend)
        results["workers_bytes"] = backend.workers()

        # the same actors (warm), now writing straight into the shared output folder, and one of them killed
        eng = fresh_engine(work, "ray-shared", cfg)
        backend.engine, backend.output_mode = eng, "shared"
        state: dict = {}
        killer = threading.Thread(target=kill_mid_shot, args=(backend, cfg["kill_shot"], state), daemon=True)
        killer.start()
        try:
            results["ray_shared"] = run_job(eng, cfg, work / "ray-shared" / "out", backend)
        finally:
            state["stop"] = True
            killer.join(5)
        results["killed"] = state.get("killed")
        results["workers_after_kill"] = backend.workers()

        # a user error on a worker: the shot fails with the embedded queue's one-line reason, nothing is retried
        eng = fresh_engine(work, "ray-errors", cfg)
        backend.engine, backend.output_mode = eng, "bytes"
        results["errors_ray"] = run_job(eng, cfg, work / "ray-errors" / "out", backend, job=cfg["bad_job"])
        results["workers_after_errors"] = backend.workers()
        results["errors_embedded"] = run_job(
            fresh_engine(work, "embedded-errors", cfg), cfg, work / "embedded-errors" / "out", job=cfg["bad_job"]
        )

        # a cancel stops the shot running on an actor at its next step; running the batch again finishes it
        eng = fresh_engine(work, "ray-cancel", cfg)
        backend.engine = eng
        state = {}
        canceller = threading.Thread(target=cancel_mid_shot, args=(backend, eng, cfg["kill_shot"], state), daemon=True)
        canceller.start()
        try:
            results["cancelled"] = run_job(eng, cfg, work / "ray-cancel" / "out", backend)
        finally:
            state["stop"] = True
            canceller.join(5)
        results["cancel_seen"] = state.get("seen")
        results["resumed"] = run_job(eng, cfg, work / "ray-cancel" / "out", backend)
        backend.close()
    finally:
        ray.shutdown()
    Path(results_path).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
