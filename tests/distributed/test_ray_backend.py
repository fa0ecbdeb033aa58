"""RayBackend on a real local Ray cluster (2 CPU actors, the tiny pipelines), inside a private network namespace.

One 10-shot job (a character pack, six plain stills, two FaceID stills of another character and a score shot of
photos on the driver's disk) runs three times from fresh driver homes with the same characters: through the
embedded queue, through Ray (bytes mode), and through Ray in shared mode while the worker rendering one shot is
SIGKILLed two steps into it. Every run must
give the same shots with the same content keys and pixel-equal PNGs; the killed shot is retried on the other
actor and nothing half-written is left. One cluster start serves both Ray checks (tests/distributed/ray_driver.py
does the driving; this file builds the inputs and asserts on what it reports).

On CPU, torch's results depend on its thread count; Ray gives each 1-CPU actor OMP_NUM_THREADS=1, so the driver
(and with it the embedded run) runs with one thread too.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
from netns import NetnsUnavailable, private_netns, run_in_netns, unavailable_reason

STILL = "tiny-stills-sdxl"
FACEID = "tiny-stills-faceid-sdxl"
INSTANTID = "tiny-stills-instantid-sdxl"
DRIVER = Path(__file__).with_name("ray_driver.py")
KILL_SHOT = "long"
PLAIN = ["harbour", "lighthouse", "forest", KILL_SHOT, "desert", "city"]


def _job(path: Path, faces_dir: Path) -> Path:
    shots = [
        {"id": "bo-pack", "kind": "pack", "character": "bo", "preset": INSTANTID, "candidates": 1,
         "shots": ["front-neutral"]},
        *[{"id": p, "kind": "still", "prompt": f"a {p} at dusk"} for p in PLAIN],
        {"id": "ava-1", "kind": "still", "preset": FACEID, "prompt": "portrait", "characters": ["ava"]},
        {"id": "ava-2", "kind": "still", "preset": FACEID, "prompt": "portrait, smiling", "characters": ["ava"]},
        # files only the driver is asked about: in bytes mode the worker gets copies (the test photos of ava)
        {"id": "qc", "kind": "score", "character": "ava", "media": [str(faces_dir / "obama*.jpg")]},
    ]  # fmt: skip
    for s in shots:
        if s["id"] == KILL_SHOT:
            s["steps"] = 40  # long enough to be killed in the middle of its render
    doc = {
        "version": 1,
        "name": "ray-test",
        "characters": {"ava": "ava", "bo": "bo"},
        "defaults": {"still": {"preset": STILL, "steps": 3, "width": 64, "height": 64}},
        "shots": shots,
    }
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def characters(tiny_settings, faces_dir, tmp_path_factory) -> list[str]:
    """Two characters (embedded for the tiny FaceID and InstantID twins) as .flx files every run imports."""
    from engine.api import Engine
    from engine.identity.registry import manifest_encoders

    tmp = tmp_path_factory.mktemp("ray-characters")
    eng = Engine(tiny_settings.model_copy(update={"home": tmp / "home", "library_path": None}))
    eng.characters.create("ava", [faces_dir / "obama.jpg", faces_dir / "obama2.jpg"])
    eng.characters.create("bo", [faces_dir / "biden.jpg"])
    encoders = manifest_encoders(eng.store.manifest)
    for preset, name in ((FACEID, "ava"), (INSTANTID, "bo")):
        face = eng.preset(preset).components.face_analysis
        eng.characters.reembed(name, next(e for e, spec in encoders.items() if spec.component_id == face))
    return [str(eng.characters.export(n, tmp / f"{n}.flx")) for n in ("ava", "bo")]


@pytest.fixture(scope="module")
def runs(characters, tiny_weights_dir, faces_dir, tmp_path_factory) -> dict:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"Ray tests need a private network namespace: {reason}")
    work = tmp_path_factory.mktemp("ray-runs")
    ray_tmp = tempfile.mkdtemp(prefix="flxray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    cfg = {
        "work": str(work),
        "weights_dir": str(tiny_weights_dir),
        "characters": characters,
        "job": str(_job(work / "job.json", faces_dir)),
        "bad_job": str(_bad_job(work / "bad-job.json")),
        "ray_tmp": ray_tmp,
        "kill_shot": KILL_SHOT,
    }
    (work / "config.json").write_text(json.dumps(cfg))
    env = {
        **os.environ,
        "HOME": str(work / "user"),  # Ray writes its auth token under ~/.ray: keep it in the test's folder
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    env.pop("RAY_ADDRESS", None)
    try:
        with private_netns() as ns:
            proc = run_in_netns(
                ns, [sys.executable, str(DRIVER), str(work / "config.json"), str(work / "results.json")],
                env=env, timeout_s=1200,
            )  # fmt: skip
    except NetnsUnavailable as e:
        pytest.skip(f"Ray tests need a private network namespace: {e}")
    finally:
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads((work / "results.json").read_text())


def _bad_job(path: Path) -> Path:
    """A shot the engine refuses (a character on a preset without identity conditioning): a user error."""
    doc = {
        "version": 1,
        "name": "ray-errors",
        "characters": {"ava": "ava"},
        "shots": [{"id": "no-identity", "kind": "still", "preset": STILL, "prompt": "x", "characters": ["ava"],
                   "steps": 2}],
    }  # fmt: skip
    path.write_text(json.dumps(doc))
    return path


def _shots(run: dict) -> dict[str, dict]:
    return {s["id"]: s for s in run["info"]["shots"]}


def test_the_driver_ran_with_nothing_but_loopback(runs):
    assert runs["interfaces"] == ["lo"]
    assert runs["node_ip"] == "127.0.0.1"  # Ray found no other address to advertise


def test_ray_gives_the_same_outputs_as_the_embedded_queue(runs):
    emb, ray_bytes = runs["embedded"], runs["ray_bytes"]
    for run in (emb, ray_bytes):
        assert run["info"]["status"] == "done", [(s["id"], s["status"], s["error"]) for s in run["info"]["shots"]]
    # the same content keys, shot by shot
    assert {k: s["key"] for k, s in _shots(ray_bytes).items()} == {k: s["key"] for k, s in _shots(emb).items()}
    # the same files, pixel for pixel (the pack's contact sheet and candidate included)
    assert len(emb["digests"]) >= 10 and any(p.startswith("bo-pack/") for p in emb["digests"])
    assert ray_bytes["digests"] == emb["digests"]
    # negative control: the digests tell different renders apart (equality above is not vacuous)
    assert len(set(emb["digests"].values())) == len(emb["digests"])
    # the pack's new version came back from the worker into the driver's library, as it does embedded
    start = emb["versions_before"]["bo"]
    assert ray_bytes["versions_before"]["bo"] == start
    assert ray_bytes["versions"]["bo"] == emb["versions"]["bo"] == start + 1
    assert ray_bytes["records"]["bo-pack"]["report"]["version"] == start + 1
    assert ray_bytes["versions"]["ava"] == ray_bytes["versions_before"]["ava"]  # only the packed one changed
    assert not ray_bytes["leftovers"] and not emb["leftovers"]
    # the score shot read the driver's photos through the copies it was sent, and scored them the same
    qc_emb, qc_ray = _shots(emb)["qc"], _shots(ray_bytes)["qc"]
    assert qc_emb["score"] is not None and qc_emb["score"] > 50 and qc_ray["score"] == qc_emb["score"]
    assert ray_bytes["records"]["qc"]["report"]["media"] == emb["records"]["qc"]["report"]["media"]
    assert ray_bytes["qc_read_copies"] and not emb["qc_read_copies"]  # the worker's score file names its copies


def test_the_shots_were_spread_over_both_workers(runs):
    ray_bytes = runs["ray_bytes"]
    workers = {s["worker"] for s in _shots(ray_bytes).values()}
    assert len(workers) == 2 and all(w.startswith("ray:") for w in workers), workers
    assert {f"ray:{w['host']}:{w['pid']}" for w in runs["workers_bytes"]} == workers
    assert all(r["report"]["ray"]["attempts"] == 1 for r in ray_bytes["records"].values())


def test_a_worker_killed_mid_shot_costs_one_attempt_and_nothing_else(runs):
    emb, shared, killed = runs["embedded"], runs["ray_shared"], runs["killed"]
    assert killed is not None and killed["shot_id"] == KILL_SHOT and 2 <= killed["step"] < killed["steps"]
    assert shared["info"]["status"] == "done", [(s["id"], s["status"], s["error"]) for s in shared["info"]["shots"]]
    ray_info = shared["records"][KILL_SHOT]["report"]["ray"]
    assert ray_info["attempts"] == 2 and len(ray_info["died"]) == 1
    assert ray_info["died"][0].startswith(killed["worker"])
    assert ray_info["worker"] != killed["worker"]  # retried on the other, live actor
    others = [r["report"]["ray"]["attempts"] for k, r in shared["records"].items() if k != KILL_SHOT]
    assert others == [1] * 9
    # the job completed with the same outputs and keys, and no partial file or staging folder is left
    assert shared["digests"] == emb["digests"]
    assert {k: s["key"] for k, s in _shots(shared).items()} == {k: s["key"] for k, s in _shots(emb).items()}
    assert shared["leftovers"] == []
    # the dead actor was replaced: two live workers, the killed pid not among them
    pids = {w["pid"] for w in runs["workers_after_kill"]}
    assert len(pids) == 2 and killed["pid"] not in pids


def test_a_user_error_on_a_worker_is_the_shots_one_line_failure_and_is_not_retried(runs):
    ray_run, emb = runs["errors_ray"], runs["errors_embedded"]
    (ray_shot,), (emb_shot,) = ray_run["info"]["shots"], emb["info"]["shots"]
    assert ray_run["info"]["status"] == emb["info"]["status"] == "failed"
    assert ray_shot["status"] == "failed" and ray_shot["error"] == emb_shot["error"]
    assert "renders without identity conditioning" in ray_shot["error"] and "\n" not in ray_shot["error"]
    assert ray_shot["attempts"] == 1 and ray_run["digests"] == {} and ray_run["leftovers"] == []
    # the actor that refused it lives on: the same workers before and after
    assert {w["pid"] for w in runs["workers_after_errors"]} == {w["pid"] for w in runs["workers_after_kill"]}


def test_a_cancel_stops_the_shot_on_its_worker_and_the_next_run_finishes_only_the_rest(runs):
    cancelled, resumed, emb = runs["cancelled"], runs["resumed"], runs["embedded"]
    assert runs["cancel_seen"] is not None and runs["cancel_seen"]["shot_id"] == KILL_SHOT
    assert cancelled["info"]["status"] == "cancelled"
    status = {k: s["status"] for k, s in _shots(cancelled).items()}
    assert status[KILL_SHOT] == "cancelled"  # stopped in the middle of its render, on the worker
    assert status["bo-pack"] == "done" and "qc" not in cancelled["started"]  # stage 0 done, stage 2 never began
    done_first = {k for k, v in status.items() if v == "done"}
    assert cancelled["leftovers"] == [] and all(p.split("/")[0] in done_first for p in cancelled["digests"])
    # the same command again: only what was not done runs, and the batch ends as the embedded one did
    assert resumed["info"]["status"] == "done"
    assert set(resumed["started"]) == set(status) - done_first and KILL_SHOT in resumed["started"]
    assert resumed["digests"] == emb["digests"]
    assert {k: s["key"] for k, s in _shots(resumed).items()} == {k: s["key"] for k, s in _shots(emb).items()}
