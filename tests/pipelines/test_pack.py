"""The character pack: scored candidates per canonical shot, the best kept, stored in the character (and its .flx)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from engine._core.errors import InputError
from engine.characters import create_character, from_bytes, reembed, to_bytes
from engine.shots.pack import Judged, load_pack_config, select_best

TWIN = "tiny-arcface-antelopev2-glintr100"


def test_pack_config_has_the_canonical_shots():
    cfg = load_pack_config()
    assert [s.id for s in cfg.shots] == [
        "front-neutral", "front-smile", "three-quarter-left", "three-quarter-right", "profile",
        "upper-body-selfie", "seated", "standing",
    ]  # fmt: skip
    assert {s.id: s.yaw for s in cfg.shots}["three-quarter-left"] == -{s.id: s.yaw for s in cfg.shots}[
        "three-quarter-right"
    ]


def test_selection_keeps_the_best_on_pose_candidate_on_real_photos(faces_dir):
    """Real photos as the candidates of a shot: the scorer judges them, the selection keeps the right one."""
    from engine.identity.images import load_image
    from engine.identity.registry import get_analyzer
    from engine.scoring import reference_from_photos
    from engine.scoring.stills import score_still

    dlib = get_analyzer()
    ref = reference_from_photos([faces_dir / "obama.jpg", faces_dir / "obama2.jpg"], dlib)
    names = ["biden.jpg", "obama2.jpg", "obama.jpg"]
    judged = []
    for n in names:
        s = score_still(load_image(faces_dir / n), [ref], dlib)
        judged.append(Judged(s.score, s.regions[0].yaw))
    frontal, turned = judged[2], judged[1]
    assert abs(frontal.yaw) < 10 and turned.yaw < -20  # obama2 turns ~35 degrees
    assert judged[0].score < 50 < min(frontal.score, turned.score)  # the other person scores low
    assert names[select_best(judged, 0.0, 15.0)] == "obama.jpg"
    assert names[select_best(judged, -35.0, 20.0)] == "obama2.jpg"  # on pose wins over a higher score
    best_any = select_best(judged, None, 90.0)
    assert judged[best_any].score == max(j.score for j in judged)
    assert select_best([Judged(None, None), Judged(None, None)], 0.0, 15.0) == 0  # no faces: the first


@pytest.fixture(scope="module")
def pack_engine(tiny_settings, faces_dir, tmp_path_factory):
    from engine._core.settings import EngineSettings
    from engine.api import Engine
    from engine.identity.registry import get_analyzer

    eng = Engine(EngineSettings(home=tmp_path_factory.mktemp("pack-home"), weights_dir=tiny_settings.weights_dir))
    ch = create_character("ava", [faces_dir / "obama.jpg", faces_dir / "obama2.jpg"], None, get_analyzer())
    ch = reembed(ch, get_analyzer(TWIN, settings=tiny_settings))
    with eng.library() as lib:
        lib.add(ch)
    return eng


def test_pack_is_stored_as_a_new_version_and_travels_in_the_flx(pack_engine, tmp_path):
    before = pack_engine.character("ava")
    res = pack_engine.pack(
        "ava", out_dir=tmp_path, candidates=2, preset="tiny-stills-instantid-sdxl",
        shots=["front-neutral", "three-quarter-left"],
    )  # fmt: skip
    after = pack_engine.character("ava")
    assert after.version == before.version + 1 and [p.shot for p in after.pack] == [
        "front-neutral",
        "three-quarter-left",
    ]
    assert res.sheet.is_file() and all(p.candidates == 2 and p.image_png[:4] == b"\x89PNG" for p in after.pack)
    for rec, img in zip(res.shots, after.pack):
        assert len(rec["candidates"]) == 2 and rec["best"].endswith(".png")
        kept = [c for c in rec["candidates"] if c["seed"] == img.seed]
        assert kept and (tmp_path / os.path.basename(rec["best"])).read_bytes() == img.image_png
    again = from_bytes(to_bytes(after)).character
    assert [p.image_png for p in again.pack] == [p.image_png for p in after.pack]
    bare = from_bytes(to_bytes(after, include_references=False)).character
    assert all(p.image_png is None for p in bare.pack)  # pack images are pictures of the person: left out too
    with pytest.raises(InputError, match="unknown pack shot"):
        pack_engine.pack("ava", out_dir=tmp_path, shots=["nope"], preset="tiny-stills-instantid-sdxl")
    with pytest.raises(InputError, match="no identity conditioning"):
        pack_engine.pack("ava", out_dir=tmp_path, preset="tiny-stills-sdxl")


def test_cli_pack(pack_engine, tmp_path):
    env = dict(os.environ, FLX_HOME=str(pack_engine.settings.home), FLX_WEIGHTS_DIR=str(pack_engine.settings.weights_dir),
               COLUMNS="200")  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-m", "engine.cli.main", "pack", "ava", "--preset", "tiny-stills-instantid-sdxl", "-n", "1",
         "--shot", "seated", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "seated" in r.stdout and "contact sheet" in r.stdout and (tmp_path / "pack.png").is_file()
    assert np.asarray(__import__("PIL.Image").Image.open(tmp_path / "pack.png")).shape[2] == 3
