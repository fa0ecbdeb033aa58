"""Clips and sequences on the tiny Wan twins: frame counts, 24 fps, continuation, the drift guard, resuming."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from engine._core.errors import ConfigError, InputError
from engine.shots.sequence import SequenceSpec, load_sequence, plan_segments
from engine.shots.video import frames_for, motion_words


@pytest.fixture(scope="module")
def eng(tiny_settings, faces_dir, tmp_path_factory):
    from engine._core.settings import EngineSettings
    from engine.api import Engine
    from engine.characters import create_character
    from engine.identity.registry import get_analyzer

    e = Engine(EngineSettings(home=tmp_path_factory.mktemp("video-home"), weights_dir=tiny_settings.weights_dir))
    with e.library() as lib:
        lib.add(create_character("ava", [faces_dir / "obama.jpg", faces_dir / "obama2.jpg"], None, get_analyzer()))
        lib.add(create_character("bob", [faces_dir / "biden.jpg"], None, get_analyzer()))
    return e


def _probe(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, float(s.average_rate), s.codec_context.name, s.codec_context.pix_fmt


def test_frame_counts_and_motion_words():
    assert frames_for(5.0, 16, 81) == 81 and frames_for(1.0, 16, 81) == 17 and frames_for(None, 16, 81) == 81
    assert frames_for(1.0, 16, 81, overlap=5) == 25  # 4k+1 covering 16 + 1 + 5
    assert motion_words("low") != motion_words("high") and motion_words(0.9) == motion_words("high")
    with pytest.raises(InputError):
        motion_words("wild")


def test_clip_is_24_fps_h264_with_16_fps_native_frames_interpolated(eng, tmp_path, faces_dir):
    out = eng.video(
        "tiny-video-wan21-i2v-480p", "walks in a park", out=tmp_path / "v.mp4", character="ava",
        start_image=str(faces_dir / "obama.jpg"), seconds=1.0, motion="high",
    )  # fmt: skip
    n, rate, codec, pix = _probe(out.path)
    assert (rate, codec, pix) == (24.0, "h264", "yuv420p")
    assert out.native_frames.shape[0] == 16 and n == out.frames.shape[0] == 24  # 1 s: 16 native -> 24
    conv = out.metadata["output"]["frame_rate_conversion"]
    assert conv["method"] == "minterpolate" and conv["frames_in"] == 16 and conv["frames_out"] == 24
    assert "dynamic" in out.metadata["prompt"] and out.metadata["character"]["name"] == "ava"
    assert "consistency" in out.metadata and json.loads(out.path.with_suffix(".json").read_text())["seed"] == 0
    big = eng.video("tiny-video-wan21-t2v-1.3b", "walks", out=tmp_path / "b.mp4", seconds=0.5, width=96, height=80,
                    interpolation="repeat")  # fmt: skip
    assert big.frames.shape[1:3] == (80, 96) and big.metadata["output"]["resize"]["filter"] == "lanczos"
    assert big.metadata["output"]["frame_rate_conversion"]["method"] == "repeat"


def test_sequence_files_are_checked_with_one_line(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("preset: x\nshots: []\n")
    with pytest.raises(ConfigError, match="shots"):
        load_sequence(bad)
    bad.write_text("preset: x\nshots: [{prompt: a, seconds: 999}]\n")
    with pytest.raises(ConfigError, match="seconds"):
        load_sequence(bad)
    spec = SequenceSpec(preset="p", segment_seconds=5, shots=[{"prompt": "a", "seconds": 12}, {"prompt": "b"}])
    segs = plan_segments(spec)
    assert [round(s.seconds, 3) for s in segs] == [4.0, 4.0, 4.0, 5.0]


def test_sequence_continues_each_segment_from_the_last_and_resumes(eng, tmp_path, monkeypatch):
    import engine.pipelines.render as render_mod

    calls = []
    real = render_mod.render_clip

    def spy(*a, **k):  # the real renderer; remembers what each segment was conditioned on and what it made
        res = real(*a, **k)
        calls.append((k.get("conditioning_frames"), res.frames))
        return res

    monkeypatch.setattr(render_mod, "render_clip", spy)
    spec = SequenceSpec(
        preset="tiny-video-wan21-vace-14b", character="ava", segment_seconds=1.0,
        shots=[{"prompt": "walks", "seconds": 2.0}, {"prompt": "sits down", "seconds": 1.0}],
        drift={"min_score": 50, "retries": 0, "reanchor": False},
    )  # fmt: skip
    out = tmp_path / "seq.mp4"
    res = eng.sequence(spec, out=out)
    assert [r["continues_from"] for r in res.segments] == [None, "frames", "frames"]
    assert calls[0][0] is None and len(calls) == 3
    kept = [calls[0][1][:16], calls[1][1][5 : 5 + 16]]  # 1 s at 16 fps after the overlap (5 conditioning frames)
    for k in (1, 2):
        np.testing.assert_array_equal(np.stack(calls[k][0]), kept[k - 1][-5:])  # starts from the previous tail
    n, rate, _, _ = _probe(out)
    assert rate == 24.0 and n == 72  # 3 s at 24 fps, seams without repeated frames
    report = json.loads(res.report_path.read_text())
    assert report["stitched"]["frames"] == 72 and len(report["segments"]) == 3
    assert all(s["drifted"] for s in report["segments"])  # noise has no face: below the guard
    calls.clear()
    again = eng.sequence(spec, out=out)
    assert [r["reused"] for r in again.segments] == [True, True, True] and calls == []  # nothing re-rendered
    changed = spec.model_copy(update={"shots": [spec.shots[0], spec.shots[1].model_copy(update={"prompt": "runs"})]})
    third = eng.sequence(changed, out=out)
    assert [r["reused"] for r in third.segments] == [True, True, False]  # only the changed segment


def test_drift_guard_retries_and_keeps_the_best_segment(eng, tmp_path, faces_dir):
    """The guard's selection on real faces: the first attempt shows another person (scores low), the retry shows
    the character; the retry is kept and the guard stops there."""
    from engine.identity.images import load_image
    from engine.outputs import save_mp4
    from engine.shots.sequence import Segment, SequenceShot, _render_segment
    from engine.shots.video import VideoOutcome, _score

    spec = SequenceSpec(preset="tiny-video-wan21-i2v-480p", character="ava", drift={"min_score": 60, "retries": 2},
                        shots=[{"prompt": "talks"}])  # fmt: skip
    faces = {"ava": load_image(faces_dir / "obama2.jpg"), "bob": load_image(faces_dir / "biden.jpg")}
    seen = []

    def render(engine, shot, out, *, start_frames=None, overlap=0):
        who = "bob" if not seen else "ava"
        seen.append(shot.seed)
        frames = np.stack([faces[who][:1000:2, :900:2]] * 8)
        meta = {"seed": shot.seed}
        report = _score(engine, frames, 24, engine.character("ava"), meta)
        return VideoOutcome(save_mp4(out, frames, fps=24, metadata=meta), frames, frames, report, meta)

    seg = Segment(0, 0, 1.0, SequenceShot(prompt="talks"))
    record, tail = _render_segment(eng, spec, seg, eng.character("ava"), "wan-i2v", None, None,
                                   tmp_path / "segment-000.mp4", render)  # fmt: skip
    assert len(seen) == 2 and len(set(seen)) == 2  # one retry, with a new seed
    assert record["attempts"][0]["score"] < 60 <= record["attempts"][1]["score"] == record["score"]
    assert not record["drifted"] and (tmp_path / "segment-000.mp4").is_file()
    assert not list(tmp_path.glob(".attempt-*"))  # the losing attempt is gone


def test_a_character_clip_uses_reference_attention_where_the_preset_has_it(eng, tmp_path):
    out = eng.video("tiny-video-wan21-t2v-14b-standin", "a man walks", out=tmp_path / "r.mp4", character="ava",
                    seconds=0.5)  # fmt: skip
    ident = out.metadata["identity"]
    assert ident["method"] == "stand-in" and ident["trained"] is True
    assert [r["label"] for r in out.metadata["references"]] == ["ref:obama.jpg", "ref:obama2.jpg"]  # frontal first
    assert out.metadata["character"]["name"] == "ava" and out.frames.shape[0] == 12  # 0.5 s at 24 fps
    plain = eng.video("tiny-video-wan21-t2v-1.3b", "a man walks", out=tmp_path / "p.mp4", character="ava", seconds=0.5)
    assert plain.metadata.get("identity") is None  # no trained weights: no reference attention, and none claimed
    from PIL import Image

    Image.fromarray(plain.frames[-1]).save(tmp_path / "last.png")
    with pytest.raises(InputError, match="no end-frame conditioning"):
        eng.video("tiny-video-wan21-t2v-14b-standin", "x", out=tmp_path / "x.mp4", character="ava",
                  end_image=str(tmp_path / "last.png"))  # fmt: skip


def test_cli_video_and_sequence(eng, tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, FLX_HOME=str(eng.settings.home), FLX_WEIGHTS_DIR=str(eng.settings.weights_dir),
               COLUMNS="200")  # fmt: skip
    run = lambda *a: subprocess.run([sys.executable, "-m", "engine.cli.main", *a], capture_output=True,  # noqa: E731
                                    text=True, env=env, timeout=600)  # fmt: skip
    r = run("video", "ava", "--preset", "tiny-video-wan21-t2v-14b-standin", "--prompt", "walks", "--seconds", "0.5",
            "--out", str(tmp_path / "v.mp4"))  # fmt: skip
    assert r.returncode == 0 and "12 frames" in r.stdout, r.stderr
    seq = tmp_path / "s.yaml"
    seq.write_text("preset: tiny-video-wan21-vace-14b-standin\ncharacter: ava\nsegment_seconds: 0.5\n"
                   "drift: {retries: 0, reanchor: false}\nshots:\n  - {prompt: walks, seconds: 1}\n")  # fmt: skip
    r = run("sequence", str(seq), "--out", str(tmp_path / "s.mp4"))
    assert r.returncode == 0 and "segment 1" in r.stdout and (tmp_path / "s.report.json").is_file(), r.stderr
    assert _probe(tmp_path / "s.mp4")[0] == 24
    r = run("video", "ava", "--preset", "tiny-video-wan21-t2v-14b-standin", "--prompt", "x", "--seconds", "99",
            "--out", str(tmp_path / "bad.mp4"))  # fmt: skip
    assert r.returncode == InputError.exit_code and "--seconds" in r.stderr and "Traceback" not in r.stderr
