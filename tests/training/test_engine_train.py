"""`Engine.train` and `flx train` end to end on the tiny SDXL twin: the LoRA is stored as a new character version,
its `.flx` carries it, a still renders with it (`--method lora`), and user mistakes are one line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from engine._core.errors import InputError

TINY = "tiny-stills-sdxl"
RUN = dict(preset=TINY, source="refs", min_images=2, steps=4, rank=4, alpha=8.0, lr=1e-3, checkpoint_every=2,
           validate_every=2, validation_steps=2)  # fmt: skip


@pytest.fixture(scope="module")
def eng(tiny_settings, faces_dir, tmp_path_factory):
    from engine._core.settings import EngineSettings
    from engine.api import Engine
    from engine.characters import create_character
    from engine.identity.registry import get_analyzer

    e = Engine(EngineSettings(home=tmp_path_factory.mktemp("train-home"), weights_dir=tiny_settings.weights_dir))
    with e.library() as lib:
        lib.add(create_character("ava", [faces_dir / "obama.jpg", faces_dir / "obama2.jpg"], None, get_analyzer()))
    return e


@pytest.fixture(scope="module")
def trained(eng, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    return eng.train("ava", out_dir=run, **RUN), run


def test_the_lora_becomes_a_new_version_that_the_flx_carries(eng, trained, tmp_path):
    from engine.characters import read_flx, write_flx

    outcome, _ = trained
    new = outcome.character
    info = outcome.result.info
    assert new.version == 2 and new.lora is not None and new.lora.data == outcome.result.lora_bytes
    assert new.lora.base_model_id == info["base_model_id"] == eng.preset(TINY).components.base
    assert (new.lora.rank, new.lora.alpha, new.lora.steps) == (4, 8.0, 4)
    assert new.lora.training_set == info["training_set"] and len(info["training_set"]) == 2
    assert eng.character("ava").version == 2  # stored in the library
    write_flx(new, tmp_path / "ava.flx")
    back = read_flx(tmp_path / "ava.flx").character
    assert back.lora.data == new.lora.data and back.lora.rank == 4 and back.lora.trigger == info["trigger"]


def test_a_still_with_the_lora_differs_from_one_without_and_records_it(eng, trained, tmp_path):
    outcome, _ = trained
    with_lora = eng.still(TINY, "studio portrait", out=tmp_path / "a.png", characters=["ava"], character_lora=1.0)
    without = eng.still(TINY, "studio portrait", out=tmp_path / "b.png", characters=["ava"], character_lora=0.0)
    from PIL import Image

    a, b = (np.asarray(Image.open(o.candidates[0].path), dtype=np.int16) for o in (with_lora, without))
    assert np.abs(a - b).max() > 0
    rec = with_lora.candidates[0].metadata["character_lora"]
    assert rec["sha256"] == outcome.character.lora.sha256 and rec["scale"] == 1.0


def test_a_second_run_in_the_same_folder_reuses_the_finished_checkpoints(eng, trained):
    outcome, run = trained
    again = eng.train("ava", out_dir=run, **RUN)
    assert again.result.resumed_from == 4 and again.result.lora_bytes == outcome.result.lora_bytes


def test_user_mistakes_are_one_line(eng, tmp_path):
    with pytest.raises(InputError, match="--rank"):
        eng.train("ava", out_dir=tmp_path, flags={"rank": "--rank"}, preset=TINY, rank=0)
    with pytest.raises(InputError, match="import it first"):
        eng.train(str(tmp_path / "x.flx"), out_dir=tmp_path, preset=TINY)
    with pytest.raises(InputError, match="2"):  # two usable images; says how many are needed
        eng.train("ava", out_dir=tmp_path / "r", **{**RUN, "min_images": 5})


def test_preset_source_and_caption_mistakes_are_refused_before_the_weights_load(eng, tmp_path, faces_dir):
    from engine._core.errors import ConfigError

    for preset, match in (("tiny-stills-faceid-sdxl", "not plain SDXL"), ("tiny-video-wan21-i2v-480p", "on images")):
        with pytest.raises(ConfigError, match=match):
            eng.train("ava", out_dir=tmp_path / "p", **{**RUN, "preset": preset})
        assert preset not in eng._pipelines  # refused before loading anything
    with pytest.raises(InputError, match="fix --from"):
        eng.train("ava", out_dir=tmp_path / "s", **{**RUN, "source": str(tmp_path / "missing")})
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in ("obama.jpg", "obama2.jpg"):
        (photos / f).write_bytes((faces_dir / f).read_bytes())
    (photos / "obama.txt").write_text("photo of ohwx man\x1b[2J")
    with pytest.raises(InputError, match="caption file .*obama.txt.*U\\+001B"):
        eng.train("ava", out_dir=tmp_path / "c", **{**RUN, "source": str(photos)})


def test_cli_train_and_still_method_lora(eng, trained, tmp_path):
    env = {**os.environ, "FLX_HOME": str(eng.settings.home), "FLX_WEIGHTS_DIR": str(eng.settings.weights_root)}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True,
                              env=env, timeout=600)  # fmt: skip

    r = run("train", "ava", "--preset", TINY, "--from", "refs", "--min-images", "2", "--steps", "2", "--rank", "2",
            "--checkpoint-every", "1", "--validate-every", "2", "--validation-steps", "2", "--out", str(tmp_path / "r"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "stored" in r.stdout and "kohya" in r.stdout and (tmp_path / "r" / "chart.png").is_file()
    r = run(
        "still",
        "--method",
        "lora",
        "--preset",
        TINY,
        "--character",
        "ava",
        "--prompt",
        "portrait",
        "--out",
        str(tmp_path / "s.png"),
    )
    assert r.returncode == 0, r.stderr
    r = run("train", "ava", "--preset", TINY, "--rank", "999", "--out", str(tmp_path / "x"))
    assert r.returncode == InputError.exit_code and "--rank" in r.stderr and "Traceback" not in r.stderr


def test_a_wan_lora_trains_on_the_standin_preset_and_a_clip_uses_it(eng, tmp_path):
    """`flx train --preset <Wan T2V>`: the transformer LoRA is stored like an SDXL one and `flx video
    --character-lora` renders with it (a different clip than without it)."""
    preset = "tiny-video-wan21-t2v-14b-standin"
    out = eng.train("ava", out_dir=tmp_path / "wan", **{**RUN, "preset": preset, "resolution": 64})
    assert out.character.lora.target == "wan-transformer" and "kohya_file" not in out.result.paths
    assert out.character.lora.base_model_id == eng.preset(preset).components.base
    a = eng.video(preset, "a man walks", out=tmp_path / "a.mp4", character="ava", seconds=0.5, character_lora=1.0)
    b = eng.video(preset, "a man walks", out=tmp_path / "b.mp4", character="ava", seconds=0.5, character_lora=0.0)
    assert a.metadata["character_lora"]["sha256"] == out.character.lora.sha256
    assert not np.array_equal(a.native_frames, b.native_frames)


def test_a_sequence_passes_the_character_lora_to_every_segment(eng, tmp_path):
    """A LoRA trained on Wan2.1-T2V-14B loads into the VACE 14B preset (VACE keeps the T2V base frozen; the manifest
    says so with `accepts_loras_of`), so a chained sequence carries it in every segment; another base is refused."""
    from engine._core.errors import ConfigError
    from engine.outputs import read_mp4_metadata
    from engine.shots.sequence import SequenceSpec

    trained = eng.train("ava", out_dir=tmp_path / "wan", **{**RUN, "preset": "tiny-video-wan21-t2v-14b-standin",
                                                            "resolution": 64, "steps": 2})  # fmt: skip
    with pytest.raises(ConfigError, match="tiny-wan21-t2v-14b"):  # a 1.3B preset: another base, named
        eng.video("tiny-video-wan21-t2v-1.3b", "x", out=tmp_path / "x.mp4", character="ava", character_lora=1.0)
    spec = SequenceSpec(preset="tiny-video-wan21-vace-14b-standin", character="ava", segment_seconds=0.5, character_lora=0.7,
                        drift={"retries": 0, "reanchor": False}, shots=[{"prompt": "walks", "seconds": 0.5}])  # fmt: skip
    result = eng.sequence(spec, out=tmp_path / "seq.mp4")
    seg = sorted((tmp_path / "seq.mp4.segments").glob("segment-000-*.mp4"))[0]
    rec = read_mp4_metadata(seg)["character_lora"]
    assert rec["scale"] == 0.7 and rec["sha256"] == trained.character.lora.sha256 and result.path.is_file()
