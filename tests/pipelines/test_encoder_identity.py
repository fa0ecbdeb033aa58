"""No silent stand-ins: an encoder id names one weights component, embeddings carry the model file's hash, and a
preset names the face pack its method was trained on (regressions of the trust work).

Before: with only the tiny twin present, `--encoder arcface-antelopev2-glintr100` silently used the twin (same
manifest role), scored anyone as 100% and stored random vectors under the real encoder's id.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from engine._core.errors import ConfigError, InputError, ModelNotFound
from engine.characters import create_character, from_bytes, identity_reference, reembed, to_bytes
from engine.identity.registry import available_encoders, encoder_for_component, get_analyzer

REAL = "arcface-antelopev2-glintr100"
TWIN = "tiny-arcface-antelopev2-glintr100"


def flx(*args, weights, home):
    env = dict(os.environ, FLX_WEIGHTS_DIR=str(weights), FLX_HOME=str(home), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True, env=env, timeout=300
    )


def one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    return lines[0]


def test_real_encoder_without_its_pack_is_one_clear_error(tiny_weights_dir, tmp_path, faces_dir):
    # the tiny twin of antelopev2 is present and verified; the real pack is not
    r = flx(
        "score", str(faces_dir / "biden.jpg"), "-r", str(faces_dir / "obama.jpg"), "--encoder", REAL,
        weights=tiny_weights_dir, home=tmp_path,
    )  # fmt: skip
    assert r.returncode == ModelNotFound.exit_code
    line = one_line(r)
    assert "'antelopev2'" in line and "flx weights fetch antelopev2" in line and "100" not in r.stdout
    r = flx(
        "character", "create", "ava", "--ref", str(faces_dir / "obama.jpg"), "--encoder", REAL,
        weights=tiny_weights_dir, home=tmp_path,
    )  # fmt: skip
    assert r.returncode == ModelNotFound.exit_code and "antelopev2" in one_line(r)
    assert (
        not (tmp_path / "library.sqlite").exists()
        or "ava" not in flx("character", "list", weights=tiny_weights_dir, home=tmp_path).stdout
    )


def test_twins_have_their_own_encoder_ids(tiny_settings, tiny_store, faces_dir):
    manifest = tiny_store.manifest
    assert {REAL, TWIN, "arcface-buffalo_l-w600k_r50", "tiny-arcface-buffalo_l-w600k_r50"} <= set(
        available_encoders(manifest)
    )
    assert encoder_for_component(manifest, "tiny-arcface-antelopev2") == TWIN
    twin = get_analyzer(TWIN, settings=tiny_settings)
    assert twin.info.encoder_id == TWIN
    assert twin.info.model_sha256 == tiny_store.component_hashes("tiny-arcface-antelopev2")["glintr100.onnx"]
    ch = create_character("ava", [faces_dir / "obama.jpg", faces_dir / "obama2.jpg"], None, get_analyzer())
    v2 = reembed(ch, twin)
    assert set(v2.embeddings) == {"dlib-resnet-v1", TWIN}  # never stored under the real id
    assert v2.embeddings[TWIN].model_sha256 == twin.info.model_sha256
    # the buffalo_l twin is a different model file: its vectors live in another space
    other = get_analyzer("tiny-arcface-buffalo_l-w600k_r50", settings=tiny_settings)
    assert other.info.model_sha256 != twin.info.model_sha256


def test_embedding_made_by_another_model_file_is_refused(tiny_settings, faces_dir):
    twin = get_analyzer(TWIN, settings=tiny_settings)
    ch = reembed(create_character("ava", [faces_dir / "obama.jpg"], None, get_analyzer()), twin)
    assert identity_reference(ch, twin.info).model_sha256 == twin.info.model_sha256
    retrained = dataclasses.replace(twin.info, model_sha256="f" * 64)  # same id, another model file
    with pytest.raises(InputError, match=r"made by model file .*flx character reembed ava --encoder") as e:
        identity_reference(ch, retrained)
    assert "\n" not in str(e.value)
    # an embedding from a file written before hashes were recorded (format 1.0) is refused the same way
    old = from_bytes(to_bytes(ch)).character
    old.embeddings[TWIN].model_sha256 = None
    with pytest.raises(InputError, match="does not record which model"):
        identity_reference(old, twin.info)
    # and the scorer refuses a reference of another model even when handed one directly
    from engine.scoring import score_frames

    ref = dataclasses.replace(identity_reference(ch, twin.info), model_sha256="0" * 64)
    with pytest.raises(InputError, match="was made by"):
        score_frames([np.zeros((64, 64, 3), np.uint8)], None, ref, twin)


def test_presets_name_the_pack_each_method_was_trained_on(tiny_settings):
    from engine.models.manifest import load_manifest
    from engine.presets import check_components, load_preset, parse_preset

    manifest = load_manifest(tiny_settings.manifest_path)
    for name, role in (
        ("stills-faceid-sdxl", "face-analysis-buffalo_l"),
        ("tiny-stills-faceid-sdxl", "face-analysis-buffalo_l"),
        ("stills-instantid-sdxl", "face-analysis-antelopev2"),
        ("tiny-stills-instantid-sdxl", "face-analysis-antelopev2"),
    ):
        preset = load_preset(name, tiny_settings.presets_dir)
        check_components(preset, manifest)
        assert manifest.get(preset.components.face_analysis).role.value == role
    assert {c.id for c in manifest.components if c.encoder} >= {"antelopev2", "buffalo_l"}
    wrong = load_preset("stills-faceid-sdxl", tiny_settings.presets_dir).model_dump(mode="json")
    wrong["components"]["face_analysis"] = "antelopev2"
    with pytest.raises(ConfigError, match="trained on face-analysis-buffalo_l"):
        check_components(parse_preset(wrong, "wrong.yaml"), manifest)
    stale = dict(wrong, identity_scale=0.8)  # a knob nothing reads is not accepted either
    with pytest.raises(ConfigError, match="identity_scale"):
        parse_preset(stale, "stale.yaml")


def test_identity_presets_refuse_without_a_character_before_reading_any_weights(tmp_path):
    """The refusal comes before a byte of (a real ~7 GB) SDXL is read or verified: an identity preset asked to
    render with no character would otherwise be plain SDXL under an identity preset's name."""
    from engine._core.settings import EngineSettings
    from engine.api import Engine

    eng = Engine(EngineSettings(home=tmp_path, weights_dir=tmp_path / "no-weights-here"))
    for preset in ("stills-faceid-sdxl", "tiny-stills-instantid-sdxl"):
        with pytest.raises(InputError, match="conditions on a character"):
            eng.still(preset, "a portrait", out=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "no-weights-here").exists()


def test_plain_render_metadata_lists_only_what_was_loaded(load_tiny):
    from engine.pipelines.render import render_still

    loaded = load_tiny("tiny-stills-sdxl")
    meta = render_still(loaded, "a portrait", seed=1, output_type="latent").metadata
    assert set(meta["models"]) == {"base"} and meta["character"] is None
    assert meta["commercial_use"] is False
