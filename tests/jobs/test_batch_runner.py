"""The embedded queue on the tiny real pipelines: a job with a pack, stills of two presets and a score shot runs
once, is skipped on a re-run, re-renders only what changed, keeps going past failures, cancels and resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

STILL = "tiny-stills-sdxl"
FACEID = "tiny-stills-faceid-sdxl"
INSTANTID = "tiny-stills-instantid-sdxl"
FAST = {"steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def env(tiny_settings, faces_dir, tmp_path_factory):
    """An Engine on the tiny weights with its own home, and a character embedded for the tiny ArcFace twins."""
    from engine.api import Engine
    from engine.identity.registry import manifest_encoders

    home = tmp_path_factory.mktemp("jobs-home")
    eng = Engine(tiny_settings.model_copy(update={"home": home, "library_path": None}))
    eng.characters.create("ava", [faces_dir / "obama.jpg", faces_dir / "obama2.jpg"])
    for preset in (FACEID, INSTANTID):  # each identity method's encoder (the tiny ArcFace twins)
        face = eng.preset(preset).components.face_analysis
        encoder = next(e for e, spec in manifest_encoders(eng.store.manifest).items() if spec.component_id == face)
        eng.characters.reembed("ava", encoder)
    return eng


def _job(tmp: Path, faces_dir: Path, **changes) -> Path:
    doc = {
        "version": 1,
        "name": "runner-test",
        "characters": {"ava": "ava"},
        "defaults": {"still": {"preset": STILL, **FAST}},
        "shots": [
            {"id": "plain-1", "kind": "still", "prompt": "a lighthouse"},
            {"id": "faceid", "kind": "still", "preset": FACEID, "prompt": "portrait", "characters": ["ava"]},
            {"id": "pack", "kind": "pack", "character": "ava", "preset": INSTANTID, "candidates": 1,
             "shots": ["front-neutral"]},
            {"id": "plain-2", "kind": "still", "prompt": "a harbour", "candidates": 2},
            {"id": "qc", "kind": "score", "character": "ava", "media": [str(faces_dir / "obama*.jpg")]},
        ],
    }  # fmt: skip
    for shot_id, update in changes.items():
        for s in doc["shots"]:
            if s["id"] == shot_id:
                s.update(update)
    path = tmp / "job.json"
    path.write_text(json.dumps(doc))
    return path


def _run(eng, job_path: Path, out: Path, **kw):
    from engine.jobs.runner import run_batch
    from engine.jobs.specs import load_job
    from engine.jobs.store import JobStore, default_store_path

    events: list[tuple[str, dict]] = []
    warm: dict[str, set[int]] = {}

    def progress(event, data):
        events.append((event, data))
        if event == "end":
            for name in eng.loaded_presets():
                warm.setdefault(name, set()).add(id(eng.pipeline(name)))

    with JobStore(default_store_path(eng.settings)) as store:
        bid = store.submit(load_job(job_path), out_dir=out, source=str(job_path))
        info = run_batch(eng, store, bid, progress=progress, **kw)
    return info, events, warm


def _stat(out: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in out.rglob("*")
        if p.is_file() and ".staging" not in p.parts and p.name != "manifest.json"
    }


@pytest.fixture(scope="module")
def first_run(env, faces_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("job")
    job = _job(tmp, faces_dir)
    out = tmp / "out"
    version_before = env.characters.get("ava").version
    info, events, warm = _run(env, job, out)
    return {"tmp": tmp, "job": job, "out": out, "info": info, "events": events, "warm": warm, "v0": version_before}


def test_every_shot_is_done_with_its_files_in_place_and_in_the_manifest(first_run, env):
    info, out = first_run["info"], first_run["out"]
    assert info.status == "done", [(s.id, s.status, s.error) for s in info.shots]
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    for s in info.shots:
        assert s.status == "done" and s.attempts == 1
        folder = out / s.id
        record = json.loads((folder / "shot.json").read_text())
        assert record["key"] == s.key  # the folder says which content it holds
        assert set(s.outputs) == {f"{s.id}/{f}" for f in record["files"]} and s.outputs
        assert set(s.outputs) <= listed
    for f in manifest["files"]:
        path = out / f["path"]
        assert path.is_file()
        if path.suffix == ".png":
            with Image.open(path) as im:
                im.load()  # complete, decodable
    plain2 = [f for f in manifest["files"] if f["shot"] == "plain-2"]
    assert sorted(Path(f["path"]).name for f in plain2) == ["plain-2-1.png", "plain-2-2.png"]
    still_meta = next(f for f in plain2 if f["path"].endswith("-1.png"))["metadata"]
    assert still_meta["seed"] == plain2[0]["parameters"]["seed"]  # the recorded seed is the derived one
    assert "models" in still_meta
    assert not list(out.glob("*/*.flx-tmp"))
    # the score shot scored real photos of the character: a high score, in the manifest
    qc = next(s for s in info.shots if s.id == "qc")
    assert qc.score is not None and qc.score > 50
    assert env.characters.get("ava").version == first_run["v0"] + 1  # the pack stored one version


def test_shots_run_by_stage_then_grouped_by_preset_on_warm_pipelines(first_run):
    starts = [d["shot"] for e, d in first_run["events"] if e == "start"]
    # pack first (later shots use the version it stores); then the two tiny-stills-sdxl shots together though
    # the file puts faceid between them; scoring last
    assert starts == ["pack", "plain-1", "plain-2", "faceid", "qc"]
    # one pipeline object per preset for the whole batch: loaded once, reused by the next shot of that preset
    assert all(len(ids) == 1 for ids in first_run["warm"].values()), first_run["warm"]


def test_running_the_same_file_again_renders_nothing(first_run, env):
    before = _stat(first_run["out"])
    version = env.characters.get("ava").version
    info, events, _ = _run(env, first_run["job"], first_run["out"])
    assert info.status == "done"
    assert [e for e, _ in events if e == "start"] == []
    assert {d["shot"] for e, d in events if e == "skip"} == {s.id for s in info.shots}
    assert _stat(first_run["out"]) == before  # same inodes and mtimes: nothing rewritten
    assert env.characters.get("ava").version == version  # the pack's own version is not seen as a change


def test_a_changed_shot_renders_again_and_only_it(first_run, env, faces_dir):
    job = _job(first_run["tmp"], faces_dir, **{"plain-1": {"prompt": "a lighthouse at night"}})
    before = _stat(first_run["out"])
    info, events, _ = _run(env, job, first_run["out"])
    assert [d["shot"] for e, d in events if e == "start"] == ["plain-1"]
    after = _stat(first_run["out"])
    assert after["plain-1/plain-1.png"] != before["plain-1/plain-1.png"]
    assert {k: v for k, v in after.items() if not k.startswith("plain-1/")} == {
        k: v for k, v in before.items() if not k.startswith("plain-1/")
    }
    record = json.loads((first_run["out"] / "plain-1" / "shot.json").read_text())
    assert record["parameters"]["prompt"] == "a lighthouse at night"


def test_failures_do_not_stop_the_batch_and_retry_failed_runs_them_again(env, faces_dir, tmp_path):
    job = _job(tmp_path, faces_dir, qc={"media": [str(tmp_path / "missing.mp4")]})
    doc = json.loads(job.read_text())
    doc["characters"]["ghost"] = "nobody-by-this-name"
    doc["shots"] = [
        {"id": "ghost", "kind": "still", "prompt": "x", "characters": ["ghost"]},
        doc["shots"][0],
        doc["shots"][4],
    ]
    job.write_text(json.dumps(doc))
    out = tmp_path / "out"
    info, _, _ = _run(env, job, out)
    status = {s.id: (s.status, s.error) for s in info.shots}
    assert info.status == "failed"
    assert status["plain-1"][0] == "done"  # the good shot ran between the two failures
    assert status["ghost"][0] == "failed" and "nobody-by-this-name" in status["ghost"][1]
    assert status["qc"][0] == "failed" and "missing.mp4" in status["qc"][1]
    assert "\n" not in status["ghost"][1] and "Traceback" not in status["qc"][1]
    attempts = {s.id: s.attempts for s in info.shots}
    info2, events, _ = _run(env, job, out)  # failed shots are listed, not run again
    assert [d["shot"] for e, d in events if e == "start"] == []
    assert {s.id: s.attempts for s in info2.shots} == attempts and info2.status == "failed"
    (tmp_path / "missing.mp4").write_bytes(b"")  # still not a video: fails again, but it was run
    info3, events, _ = _run(env, job, out, retry_failed=True)
    assert {d["shot"] for e, d in events if e == "start"} == {"qc"}  # its input file changed: a new key anyway
    assert next(s for s in info3.shots if s.id == "qc").attempts == attempts["qc"] + 1
    info4, events, _ = _run(env, job, out, retry_failed=True)
    assert {d["shot"] for e, d in events if e == "start"} == {"qc"}  # retried: same key, run again
    assert next(s for s in info4.shots if s.id == "qc").attempts == attempts["qc"] + 2
    # a shot whose character is missing fails at planning, every run, with the reason (nothing rendered)
    assert next(s for s in info4.shots if s.id == "ghost").status == "failed"


def test_cancel_stops_at_the_next_step_and_the_next_run_continues(env, faces_dir, tmp_path):
    from engine.jobs.runner import run_batch
    from engine.jobs.specs import load_job
    from engine.jobs.store import JobStore, default_store_path

    job_path = _job(tmp_path, faces_dir)
    doc = json.loads(job_path.read_text())
    doc["name"] = "cancel-test"
    doc["shots"] = [{"id": f"s{i}", "kind": "still", "prompt": f"scene {i}", "steps": 3} for i in range(3)]
    job_path.write_text(json.dumps(doc))
    out = tmp_path / "out"
    with JobStore(default_store_path(env.settings)) as store:
        bid = store.submit(load_job(job_path), out_dir=out, source="test")

        def progress(event, data):
            if event == "step" and data["shot"] == "s1" and data["step"] == 1:
                with JobStore(default_store_path(env.settings)) as other:  # as `flx batch cancel` would
                    other.cancel(bid)

        info = run_batch(env, store, bid, progress=progress)
        assert info.status == "cancelled"
        status = {s.id: s.status for s in info.shots}
        assert status == {"s0": "done", "s1": "cancelled", "s2": "pending"}
        assert not (out / "s1").exists()  # nothing of the stopped shot in the output folder
        s0 = (out / "s0" / "s0.png").stat().st_mtime_ns
        bid2 = store.submit(load_job(job_path), out_dir=out, source="test")
        assert bid2 == bid
        info = run_batch(env, store, bid)
        assert info.status == "done"
        assert (out / "s0" / "s0.png").stat().st_mtime_ns == s0


def test_a_shot_renamed_into_place_before_its_row_was_written_is_adopted(env, faces_dir, tmp_path):
    """The one window between the two steps of a commit (folder renamed, row not yet done): the next run trusts
    the folder's shot.json (same key) instead of rendering it again."""
    from engine.jobs.store import JobStore, default_store_path

    job = _job(tmp_path, faces_dir)
    doc = json.loads(job.read_text())
    doc["name"] = "adopt-test"
    doc["shots"] = doc["shots"][:1]
    job.write_text(json.dumps(doc))
    out = tmp_path / "out"
    info, _, _ = _run(env, job, out)
    png = out / "plain-1" / "plain-1.png"
    stamp = (png.stat().st_ino, png.stat().st_mtime_ns)
    with JobStore(default_store_path(env.settings)) as store:
        store.set_pending(info.id, ["plain-1"])  # as if killed after the rename
    info, events, _ = _run(env, job, out)
    assert info.status == "done" and [e for e, _ in events if e == "start"] == []
    assert (png.stat().st_ino, png.stat().st_mtime_ns) == stamp


def test_seeds_are_derived_per_shot_and_stable(env, faces_dir, tmp_path):
    from engine.jobs.specs import derived_seed, load_job

    job = load_job(_job(tmp_path, faces_dir))
    seeds = {s.id: job.seed_of(s) for s in job.shots}
    assert len(set(seeds.values())) == len(seeds)  # different per shot
    assert (
        seeds["plain-1"]
        == derived_seed("runner-test", "plain-1")
        == load_job(_job(tmp_path, faces_dir)).seed_of(job.shot("plain-1"))
    )
    assert derived_seed("another-job", "plain-1") != seeds["plain-1"]
    explicit = load_job(_job(tmp_path, faces_dir, **{"plain-1": {"seed": 42}}))
    assert explicit.seed_of(explicit.shot("plain-1")) == 42


def test_status_is_readable_from_another_process_while_nothing_runs(env, first_run):
    from engine.jobs.store import JobStore, default_store_path

    with JobStore(default_store_path(env.settings), readonly=True) as ro:
        info = ro.batch(first_run["info"].id)
        assert info.status == "done" and info.counts == {"done": 5}
        assert info.name == "runner-test" and [s.id for s in info.shots][0] == "plain-1"
        with pytest.raises(Exception, match="read-only"):
            ro.cancel(info.id)
    assert os.path.exists(default_store_path(env.settings))


def test_release_keeps_the_named_pipelines_warm_and_drops_the_rest(env, first_run):
    kept = env.pipeline(STILL)
    env.pipeline(FACEID)
    assert {STILL, FACEID} <= set(env.loaded_presets())
    released = env.release_pipelines({STILL})
    assert FACEID in released and STILL not in released
    assert env.loaded_presets() == [STILL] and env.pipeline(STILL) is kept


def test_a_lora_trained_after_a_pack_is_not_trained_again_on_a_rerun(env, faces_dir, tmp_path):
    """Stage 0 chains: the pack stores v+1, the LoRA trains on v+1 and stores v+2. A re-run traces both versions
    back to the batch's start and skips both (and the still that uses the LoRA's version)."""
    doc = {
        "version": 1,
        "name": "chain-test",
        "characters": {"ava": "ava"},
        "shots": [
            {"id": "lora", "kind": "train", "character": "ava", "preset": STILL, "source": "refs", "min_images": 2,
             "steps": 2, "rank": 2, "checkpoint_every": 2, "validate_every": 2, "validation_steps": 1,
             "resolution": 64},
            {"id": "pack", "kind": "pack", "character": "ava", "preset": INSTANTID, "candidates": 1,
             "shots": ["front-neutral"]},
            {"id": "after", "kind": "still", "preset": FACEID, "prompt": "portrait", "characters": ["ava"], **FAST},
        ],
    }  # fmt: skip
    # the file lists the LoRA before the pack: stage 0 keeps the file order, each planned after the one before
    job = tmp_path / "chain.json"
    job.write_text(json.dumps(doc))
    out = tmp_path / "out"
    v0 = env.characters.get("ava").version
    info, events, _ = _run(env, job, out)
    assert info.status == "done", [(s.id, s.error) for s in info.shots]
    assert [d["shot"] for e, d in events if e == "start"] == ["lora", "pack", "after"]
    assert env.characters.get("ava").version == v0 + 2
    info, events, _ = _run(env, job, out)
    assert info.status == "done" and [d["shot"] for e, d in events if e == "start"] == []
    assert env.characters.get("ava").version == v0 + 2
