"""`flx batch`: validate lists every problem before GPU time, run exits 10 when a shot failed, status and cancel
work from another process, and user mistakes are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def flx(*args, home: Path, weights: Path):
    env = dict(os.environ, FLX_HOME=str(home), FLX_WEIGHTS_DIR=str(weights), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True, env=env, timeout=300,
        cwd=REPO,
    )  # fmt: skip


def one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    return lines[0]


def test_validate_lists_every_problem_of_the_machine_before_running(tmp_path, tiny_weights_dir):
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: check\n"
        "characters: {ghost: nobody, file: missing.flx}\n"
        "shots:\n"
        "  - {id: a, kind: still, preset: no-such-preset, prompt: p}\n"
        "  - {id: b, kind: still, preset: tiny-video-wan21-i2v-480p, prompt: p}\n"
        "  - {id: c, kind: video, preset: tiny-video-wan21-i2v-480p, prompt: p, start_image: nope.png}\n"
        "  - {id: d, kind: score, character: ghost, media: [none/*.mp4]}\n"
        "  - {id: e, kind: still, preset: tiny-stills-sdxl, prompt: fine}\n"
    )
    r = flx("batch", "validate", str(job), home=tmp_path / "home", weights=tiny_weights_dir)
    assert r.returncode == 2, r.stdout + r.stderr
    out = r.stdout
    assert "character 'ghost'" in out and "nobody" in out
    assert "character 'file'" in out and "missing.flx" in out
    assert "shot 'a' (still)" in out and "no-such-preset" in out
    assert "shot 'b' (still): preset 'tiny-video-wan21-i2v-480p' makes video" in out
    assert "shot 'c' (video): start_image" in out and "nope.png does not exist" in out
    assert "shot 'd' (score)" in out and "no file matches" in out
    assert "shot 'e'" not in out
    assert not (tmp_path / "home" / "jobs.sqlite").exists()  # validation never queues anything
    # a missing weights component is named with its fix (the preset is valid, the weights are not here)
    job.write_text("name: w\nshots: [{id: a, kind: still, preset: tiny-stills-sdxl, prompt: p}]\n")
    r = flx("batch", "validate", str(job), home=tmp_path / "home", weights=tmp_path / "empty-weights")
    assert r.returncode == 2 and "make_tiny_weights.py --only" in r.stdout, r.stdout
    # run validates first, and a run refused by validation leaves no batch behind
    r = flx("batch", "run", str(job), home=tmp_path / "home", weights=tmp_path / "empty-weights")
    assert r.returncode == 2 and not (tmp_path / "home" / "jobs.sqlite").exists()


def test_run_status_and_a_failed_shot(tmp_path, tiny_weights_dir):
    home = tmp_path / "home"
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: cli-run\noutput: renders\n"
        "defaults: {still: {preset: tiny-stills-sdxl, steps: 2, width: 64, height: 64}}\n"
        "shots:\n"
        "  - {id: ok, kind: still, prompt: a lighthouse}\n"
        "  - {id: broken, kind: still, prompt: 'a castle', width: 64, height: 64, scheduler: no-such-scheduler}\n"
    )
    r = flx("batch", "run", str(job), "--no-validate", home=home, weights=tiny_weights_dir)
    assert r.returncode == 10, r.stdout + r.stderr  # a shot failed: listed, non-zero
    assert "failed broken (still)" in r.stdout and "no-such-scheduler" in r.stdout
    assert (tmp_path / "renders" / "ok" / "ok.png").is_file()  # `output:` is relative to the job file
    assert "manifest:" in r.stdout
    r = flx("batch", "status", "cli-run", "--json", home=home, weights=tiny_weights_dir)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert {s["id"]: s["status"] for s in info["shots"]} == {"ok": "done", "broken": "failed"}
    assert info["status"] == "failed"
    r = flx("batch", "list", home=home, weights=tiny_weights_dir)
    assert r.returncode == 0 and "cli-run" in r.stdout
    r = flx("batch", "cancel", "no-such-batch", home=home, weights=tiny_weights_dir)
    assert r.returncode == 2 and "no batch 'no-such-batch'" in one_line(r)


def test_user_mistakes_are_one_line(tmp_path, tiny_weights_dir):
    home = tmp_path / "home"
    r = flx("batch", "run", str(tmp_path / "nope.yaml"), home=home, weights=tiny_weights_dir)
    assert r.returncode == 2 and "job file not found" in one_line(r)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nshots:\n  - {id: a, kind: still, prompt: p, preset: q, steps: 0}\n")
    r = flx("batch", "validate", str(bad), home=home, weights=tiny_weights_dir)
    assert r.returncode == 2
    assert f"{bad} line 3: key 'shots[0].steps': must be a whole number from 1 to 200 (got 0)" in one_line(r)
    r = flx("batch", "status", home=home, weights=tiny_weights_dir)
    assert r.returncode == 2 and "no job store" in one_line(r)
