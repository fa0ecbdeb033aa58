"""Load on the server: N concurrent clients on loopback list characters, poll a batch's status and upload `.flx`
files while the server's worker renders a tiny batch; requests/s, p50/p99 latency per kind, and a check that no job
and no file was lost (every shot done, every manifest file on disk and downloadable byte for byte, every uploaded
character in the library).

    .venv/bin/python benchmarks/server_load.py [--clients 8] [--shots 4] [--min-seconds 20] [--save FILE]

A real `flx serve` subprocess (uvicorn, its GPU worker process) on 127.0.0.1; the clients are threads with their
own httpx connection. Everything shares this machine's cores with the worker's renders, so the latencies include
that contention (the case the numbers are for: a team using the page while the GPU box renders).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESET = "tiny-stills-sdxl"
KINDS = ("list", "status", "upload")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def _job(shots: int) -> dict:
    return {
        "version": 1,
        "name": "load",
        "defaults": {"still": {"preset": PRESET, "steps": 2, "width": 64, "height": 64}},
        "shots": [{"id": f"s{i}", "kind": "still", "prompt": f"portrait photo {i}", "seed": i} for i in range(shots)],
    }


def _characters(home: Path, faces_dir: Path, count: int) -> list[tuple[str, str, bytes]]:
    """(id, name, .flx bytes) of `count` distinct characters: one made from photos, the rest its variants."""
    from engine._core.settings import EngineSettings
    from engine.api import Engine

    chars = Engine(EngineSettings(home=home, device="cpu", offline=True)).characters
    base = chars.create("ava", [faces_dir / "obama.jpg", faces_dir / "obama2.jpg"])
    out = [(base.id, base.name, chars.export_bytes(base.id))]
    for i in range(count - 1):
        v = chars.variant(base.id, f"ava-{i:03d}", wardrobe=f"outfit {i}")
        out.append((v.id, v.name, chars.export_bytes(v.id)))
    return out


def _client(base: str, batch_id: str, uploads, stop: threading.Event, record, errors) -> None:
    import httpx

    plan = ("list", "status", "list", "status", "upload")
    with httpx.Client(base_url=base, timeout=120) as http:
        i = 0
        while not stop.is_set():
            kind = plan[i % len(plan)]
            t0 = time.perf_counter()
            if kind == "list":
                r = http.get("/api/characters")
            elif kind == "status":
                r = http.get(f"/api/jobs/{batch_id}")
            else:
                _cid, name, data = uploads[(i // len(plan)) % len(uploads)]
                r = http.post("/api/characters/import", files={"file": (f"{name}.flx", data, "application/x-flx")})
            record(kind, time.perf_counter() - t0)
            if r.status_code >= 300:
                errors.append(f"{kind}: {r.status_code} {r.text[:200]}")
            i += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces-dir", type=Path, default=REPO.parent / "shared" / "testdata" / "faces")
    ap.add_argument("--weights-dir", type=Path, default=None)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--uploads-per-client", type=int, default=3)
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--min-seconds", type=float, default=20.0)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--save", type=Path, default=None)
    args = ap.parse_args()

    import httpx

    from engine._core.settings import EngineSettings

    weights = args.weights_dir or EngineSettings().weights_root
    tmp = Path(tempfile.mkdtemp(prefix="flx-bench-server-"))
    chars = _characters(tmp / "source-home", args.faces_dir, args.clients * args.uploads_per_client)
    home, outputs = tmp / "home", tmp / "outputs"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FLX_HOME": str(home), "FLX_WEIGHTS_DIR": str(weights), "FLX_OUTPUTS_DIR": str(outputs),
           "FLX_DEVICE": "cpu", "FLX_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {(tmp / 'server.log').read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/api/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.2)
        batch = httpx.post(f"{base}/api/jobs", json=_job(args.shots), timeout=120).json()

        lat: dict[str, list[float]] = {k: [] for k in KINDS}
        lock = threading.Lock()

        def record(kind: str, s: float) -> None:
            with lock:
                lat[kind].append(s)

        errors: list[str] = []
        stop = threading.Event()
        per = args.uploads_per_client
        threads = [
            threading.Thread(
                target=_client, args=(base, batch["id"], chars[i * per : (i + 1) * per], stop, record, errors)
            )
            for i in range(args.clients)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        status = batch["status"]
        with httpx.Client(base_url=base, timeout=120) as http:
            while True:
                time.sleep(0.5)
                status = http.get(f"/api/jobs/{batch['id']}").json()["status"]
                elapsed = time.perf_counter() - t0
                done = status in ("done", "failed", "cancelled")
                if (done and elapsed >= args.min_seconds) or elapsed >= args.max_seconds:
                    break
            stop.set()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0

            # nothing lost: every shot done, every manifest file on disk and downloadable, every upload stored
            info = http.get(f"/api/jobs/{batch['id']}").json()
            outs = http.get("/api/outputs", params={"job": batch["id"]}).json()
            lost_files = []
            for o in outs:
                disk = Path(info["out_dir"]) / o["path"]
                got = http.get(o["url"]).content
                if not disk.is_file() or hashlib.sha256(got).digest() != hashlib.sha256(disk.read_bytes()).digest():
                    lost_files.append(o["path"])
            shots_done = sum(1 for s in info["shots"] if s["status"] == "done")
            shots_with_png = {o["shot"] for o in outs if o["path"].endswith(".png")}
            library = {c["id"]: c for c in http.get("/api/characters").json()}
            missing = [name for cid, name, _ in chars if cid not in library or library[cid]["name"] != name]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    total = sum(len(v) for v in lat.values())
    lines = [
        f"server load: {args.clients} clients on 127.0.0.1 for {wall:.1f} s while the worker rendered a "
        f"{args.shots}-shot {PRESET} batch (64x64, 2 steps); {total} requests, {total / wall:.1f} requests/s, "
        f"{len(errors)} errors",
    ]
    for kind in KINDS:
        xs = lat[kind]
        if xs:
            lines.append(
                f"  {kind:<6} {len(xs):5d} requests  p50 {statistics.median(xs) * 1e3:7.1f} ms  "
                f"p99 {_pct(xs, 0.99) * 1e3:7.1f} ms  max {max(xs) * 1e3:7.1f} ms"
            )
    lines.append(
        f"nothing lost: batch {info['status']}, {shots_done}/{args.shots} shots done, {len(shots_with_png)} with a "
        f"PNG, {len(outs)} manifest files all on disk and downloaded byte-identical: "
        f"{'yes' if not lost_files else 'NO ' + str(lost_files)}; {len(chars)} uploaded characters all in the "
        f"library: {'yes' if not missing else 'NO ' + str(missing)}"
    )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    for e in errors[:5]:
        print("error:", e)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text)
    ok = not errors and not lost_files and not missing and shots_done == args.shots
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
