"""`kill -9` of a real `flx batch run` process, twice (in the middle of a denoising step, and just after a shot
finished), then a re-run: the job completes with no corrupt or half-written file, no duplicate, and nothing that
had finished rendered again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SHOTS = 4


def _flx(home: Path, weights: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli.main", "--home", str(home), "--weights-dir", str(weights), *args]


def _wait(store_path: Path, proc: subprocess.Popen, until, timeout: float = 240.0) -> None:
    """Poll the store (read-only, as `flx batch status` does) until `until(info)` is true."""
    from engine.jobs.store import JobStore

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the batch ended before the kill: {proc.communicate()}"
        if store_path.exists():
            try:
                with JobStore(store_path, readonly=True) as store:
                    rows = store.batches()
                    if rows and until(store.batch(rows[0].id)):
                        return
            except Exception:  # noqa: BLE001 - the store may be mid-creation; poll again
                pass
        time.sleep(0.02)
    pytest.fail("the batch never reached the state to kill it in")


def _mid_step(b) -> bool:
    """A shot is running and between its first and last denoising step."""
    running = [s for s in b.shots if s.status == "running" and s.id == b.current]
    return bool(running) and b.progress.step is not None and 0 < b.progress.step < (b.progress.steps or 0)


def _files(out: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in out.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(out).parts)
        and p.name != "manifest.json"
    }


def _check_output_folder(out: Path) -> None:
    """Only complete shots in the output folder: every shot folder has its shot.json and whole PNGs."""
    for folder in out.iterdir():
        if folder.name.startswith(".") or folder.name == "manifest.json":
            continue  # the staging folder, a killed writer's hidden temp (removed by the next write), the manifest
        record = json.loads((folder / "shot.json").read_text())
        assert sorted(p.name for p in folder.iterdir()) == sorted([*record["files"], "shot.json"])
        for f in record["files"]:
            with Image.open(folder / f) as im:
                im.load()


def test_kill_9_twice_then_rerun_completes_with_nothing_lost_or_redone(tiny_weights_dir, tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    job = tmp_path / "job.yaml"
    shots = "\n".join(f"  - {{id: s{i}, kind: still, prompt: 'scene number {i}'}}" for i in range(SHOTS))
    job.write_text(
        "version: 1\nname: kill-test\n"
        "defaults:\n  still: {preset: tiny-stills-sdxl, steps: 24, width: 64, height: 64, candidates: 2}\n"
        f"shots:\n{shots}\n"
    )
    store_path = home / "jobs.sqlite"
    cmd = _flx(home, tiny_weights_dir, "batch", "run", str(job), "--out", str(out))
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    # 1. killed in the middle of a denoising step of the second shot
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait(store_path, proc, lambda b: b.counts.get("done", 0) >= 1 and _mid_step(b))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _check_output_folder(out)
    first = _files(out)
    done_1 = {k.split("/")[0] for k in first if k.endswith("shot.json")}
    assert done_1 and len(done_1) < SHOTS

    # 2. killed right after another shot finished (its folder is in place)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait(store_path, proc, lambda b: b.counts.get("done", 0) >= len(done_1) + 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _check_output_folder(out)
    second = _files(out)
    assert {k: second[k] for k in first} == first  # what had finished was not rendered again

    # 3. a plain re-run completes the job
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    _check_output_folder(out)
    final = _files(out)
    assert {k: final[k] for k in second} == second
    manifest = json.loads((out / "manifest.json").read_text())
    paths = [f["path"] for f in manifest["files"]]
    assert len(paths) == len(set(paths)) == SHOTS * 2  # every candidate once: no duplicates, nothing missing
    assert sorted({p.split("/")[0] for p in paths}) == [f"s{i}" for i in range(SHOTS)]
    from engine.jobs.store import JobStore

    with JobStore(store_path, readonly=True) as store:
        info = store.batch("kill-test")
    assert info.status == "done" and info.counts == {"done": SHOTS}
    # the shot killed mid-step ran twice; shots that had finished ran once
    attempts = {s.id: s.attempts for s in info.shots}
    assert all(attempts[s] == 1 for s in done_1)
    assert max(attempts.values()) >= 2
    assert not list(out.glob("**/*.flx-tmp"))
