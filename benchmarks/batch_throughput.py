"""What the batch queue costs: 20 tiny stills through the embedded queue (`run_batch`: job file, content keys,
job store rows, staging folder + rename, manifest after each shot) vs a plain loop calling `Engine.still` 20 times,
and the same 20 shots through `RayBackend` on a local Ray cluster with 2 actors (speed-up) and with 1 actor
(per-task overhead), all measured side by side in one run.

    .venv/bin/python benchmarks/batch_throughput.py [--weights-dir DIR] [--rounds 7] [--shots 20] [--save FILE]

Every side renders the same 20 shots (tiny-stills-sdxl, 64x64, 4 steps, one candidate, fresh output folder each
time) on warm pipelines (a warm-up pass per side first), in two phases: the queue against the plain loop before
any Ray process starts, then Ray against the queue with the cluster up. Rounds are interleaved, the order of the
sides rotating from round to round, so drift on this shared machine hits every side alike; each ratio is the median of the
per-round ratios, with its 10th-90th percentile spread. Torch runs one thread in every process (Ray gives a
1-CPU actor OMP_NUM_THREADS=1; the driver is set to match), so "2 actors" means two cores against one.

The Ray cluster is started here with a private temp dir (`ray.init(address="local")`) and stopped with
`ray.shutdown()`. Ray listens on every interface, so the benchmark re-runs itself in a private network
namespace with only loopback up (`unshare -n`, root) before starting it; `--no-ray` skips the Ray part.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESET = "tiny-stills-sdxl"
PARAMS = {"width": 64, "height": 64, "steps": 4}


def _spread(ratios: list[float]) -> tuple[float, float, float]:
    ratios = sorted(ratios)
    q = statistics.quantiles(ratios, n=10) if len(ratios) >= 2 else [ratios[0]] * 9
    return statistics.median(ratios), q[0], q[-1]


def _nothing() -> int:
    return 0


def _isolated() -> bool:
    return sorted(name for _, name in socket.if_nameindex()) == ["lo"]


def _reexec_isolated(args: argparse.Namespace) -> int:
    """Run this script again inside `unshare -n` (only `lo`, brought up) with Ray's files in a temp HOME."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        print("the Ray part needs a private network namespace (root + unshare + ip): run as root or pass --no-ray")
        return 2
    home = tempfile.mkdtemp(prefix="flx-bench-home-")
    env = {**os.environ, "HOME": home, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    argv = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--weights-dir", str(args.weights_dir)]
    inner = "ip link set lo up && exec " + " ".join(_quote(a) for a in argv)
    try:
        return subprocess.run(["unshare", "-n", "sh", "-c", inner], env=env, check=False).returncode
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights-dir", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=7, help="Interleaved rounds (each runs every side once).")
    ap.add_argument("--shots", type=int, default=20)
    ap.add_argument("--no-ray", action="store_true", help="Only the embedded queue vs the plain loop.")
    ap.add_argument("--save", type=Path, default=None, help="Also write the printed lines to this file.")
    args = ap.parse_args()

    from engine._core.settings import EngineSettings

    if args.weights_dir is None:
        args.weights_dir = EngineSettings().weights_root
    if not args.no_ray and not _isolated():
        return _reexec_isolated(args)
    os.environ["OMP_NUM_THREADS"] = "1"

    import torch
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    from engine.api import Engine
    from engine.jobs.runner import run_batch
    from engine.jobs.specs import parse_job
    from engine.jobs.store import JobStore

    torch.set_num_threads(1)
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp(prefix="flx-bench-batch-"))
    eng = Engine(EngineSettings(home=tmp / "home", weights_dir=args.weights_dir, outputs_dir=tmp))
    shots = [
        {"id": f"s{i:02d}", "kind": "still", "prompt": f"a lighthouse, view {i}", "seed": i} for i in range(args.shots)
    ]
    doc = {"version": 1, "name": "bench", "defaults": {"still": {"preset": PRESET, **PARAMS}}, "shots": shots}
    job = parse_job(doc, source="bench.json", base_dir=tmp)
    store = JobStore(tmp / "jobs.sqlite")
    n = {"run": 0}

    def fresh(label: str) -> Path:
        n["run"] += 1
        return tmp / f"{label}-{n['run']}"

    inside = {"s": 0.0}  # seconds spent inside Engine.still (the render itself), per side and round
    still = eng.still

    def timed_still(*a, **kw):
        t = time.perf_counter()
        try:
            return still(*a, **kw)
        finally:
            inside["s"] += time.perf_counter() - t

    eng.still = timed_still  # both sides call it: what is left of a side's time is its own bookkeeping
    around: dict[str, list[float]] = {"plain": [], "queue": []}

    def plain() -> None:
        out = fresh("plain")
        out.mkdir()
        for s in shots:
            eng.still(PRESET, s["prompt"], seed=s["seed"], out=out / f"{s['id']}.png", **PARAMS)
        shutil.rmtree(out)

    def queue(backend=None):
        def go() -> None:
            out = fresh("queue")
            bid = store.submit(job, out_dir=out, source="bench.json")
            info = run_batch(eng, store, bid, backend=backend)
            assert info.status == "done", [(s.id, s.error) for s in info.shots]
            shutil.rmtree(out)

        return go

    def measure(sides: dict) -> dict[str, list[float]]:
        """Warm every side once, then `args.rounds` interleaved rounds (the order rotating each round)."""
        for fn in sides.values():  # warm-up: pipelines loaded, actors started
            fn()
        times: dict[str, list[float]] = {k: [] for k in sides}
        names = list(sides)
        for r in range(args.rounds):
            for k in names[r % len(names) :] + names[: r % len(names)]:
                inside["s"] = 0.0
                t = time.perf_counter()
                sides[k]()
                times[k].append(time.perf_counter() - t)
                if k in around:
                    around[k].append(times[k][-1] - inside["s"])
        return times

    # 1. the queue against the plain loop, before any Ray process runs on this machine (no background daemons)
    times = measure({"plain": plain, "queue": queue()})
    backends = []
    if not args.no_ray:
        import ray

        from engine.distributed import RayBackend

        ray.init(address="local", num_cpus=3, _temp_dir=str(tmp / "ray"), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)  # fmt: skip
        worker = {"weights_dir": str(args.weights_dir)}
        two = RayBackend("auto", actors=2, worker_home=str(tmp / "workers"), worker_settings=worker)
        one = RayBackend("auto", actors=1, worker_home=str(tmp / "workers"), worker_settings=worker)
        backends = [two, one]
        nothing = ray.remote(num_cpus=0)(_nothing)
        ray.get(nothing.remote())
        noop = []
        for _ in range(50):
            t = time.perf_counter()
            ray.get(nothing.remote())
            noop.append(time.perf_counter() - t)
        # 2. Ray against the embedded queue, side by side with the cluster up
        ray_times = measure({"queue_ray": queue(), "ray2": queue(two), "ray1": queue(one)})
        times.update(ray_times)
    med = {k: statistics.median(v) for k, v in times.items()}
    q, qlo, qhi = _spread([b / a for a, b in zip(times["plain"], times["queue"])])
    lines = [
        f"batch_throughput: {args.shots} shots of {PRESET} ({PARAMS['width']}x{PARAMS['height']}, {PARAMS['steps']} "
        f"steps, 1 candidate), torch {torch.__version__}, 1 thread per process, {os.cpu_count()} cores; "
        f"median of {args.rounds} interleaved rounds [p10-p90 of per-round ratios]",
        f"plain loop (Engine.still x{args.shots}) {med['plain']:.2f} s | embedded queue (run_batch) {med['queue']:.2f} s"
        f" | ratio {q:.3f}x [{qlo:.3f}-{qhi:.3f}] (goal <= 1.05)",
        f"time outside Engine.still per shot (the bookkeeping, which render noise does not blur): plain loop "
        f"{statistics.median(around['plain']) / args.shots * 1000:.1f} ms, embedded queue "
        f"{statistics.median(around['queue']) / args.shots * 1000:.1f} ms (job store rows, content key, staging "
        f"folder + rename, shot.json, manifest) = {statistics.median(around['queue']) / med['plain'] * 100:.1f}% of "
        f"the plain loop's time",
    ]
    if backends:
        s, slo, shi = _spread([a / b for a, b in zip(times["queue_ray"], times["ray2"])])
        o = [(b - a) / args.shots * 1000 for a, b in zip(times["queue_ray"], times["ray1"])]
        om, olo, ohi = _spread(o)
        lines += [
            f"Ray, 2 actors {med['ray2']:.2f} s: speed-up {s:.2f}x [{slo:.2f}-{shi:.2f}] over the embedded queue "
            f"(2 one-thread workers vs 1)",
            f"Ray, 1 actor {med['ray1']:.2f} s: per-task overhead {om:.1f} ms [{olo:.1f}-{ohi:.1f}] per shot vs the "
            f"embedded queue (shot sent, files returned as bytes, written by the driver); a no-op Ray task "
            f"{statistics.median(noop) * 1000:.2f} ms round trip",
        ]
        for b in backends:
            b.close()
        import ray

        ray.shutdown()
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(lines))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
