"""Creating characters from the real test photos with the default (dlib) analyzer, and the CLI around it."""

from __future__ import annotations

import dataclasses
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine._core.errors import AmbiguousFace, InputError
from engine.characters import (
    CharacterLibrary,
    CharacterProfile,
    RefSpec,
    create_character,
    from_bytes,
    identity_reference,
    parse_ref_spec,
    reembed,
    to_bytes,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def analyzer():
    from engine.identity.registry import get_analyzer

    return get_analyzer()


@pytest.fixture(scope="module")
def obama(faces_dir, analyzer):
    profile = CharacterProfile.model_validate(
        {"hair_colour": "black, greying", "tags": ["politician"], "future_key": {"kept": True}}
    )
    refs = [(faces_dir / "obama.jpg", 1.0, None), str(faces_dir / "obama2.jpg") + ":0.5"]
    return create_character("obama", refs, profile, analyzer)


def test_parse_ref_spec():
    assert parse_ref_spec("a.jpg") == RefSpec(Path("a.jpg"), 1.0)
    assert parse_ref_spec("a.jpg:0.5") == RefSpec(Path("a.jpg"), 0.5)
    assert parse_ref_spec(r"C:\photos\a.jpg") == RefSpec(Path(r"C:\photos\a.jpg"), 1.0)
    assert parse_ref_spec(r"C:\photos\a.jpg:2") == RefSpec(Path(r"C:\photos\a.jpg"), 2.0)
    assert parse_ref_spec("odd:name.jpg") == RefSpec(Path("odd:name.jpg"), 1.0)
    with pytest.raises(InputError, match="above 0"):
        parse_ref_spec("a.jpg:0")


def test_two_photos_merge(obama, analyzer):
    emb = obama.embeddings["dlib-resnet-v1"]
    info = analyzer.info
    assert emb.dim == 128 and len(emb.vector) == 128 and emb.metric == "euclidean"
    assert [r.source_filename for r in obama.references] == ["obama.jpg", "obama2.jpg"]
    assert [r.weight for r in obama.references] == [1.0, 0.5]
    a, b = (np.asarray(v) for v in emb.per_reference)
    merged = np.asarray(emb.vector)
    # leave-one-out with two photos = their pairwise distance; same person -> under the threshold
    assert emb.leave_one_out_distances[0] == pytest.approx(info.distance(a, b), abs=1e-5)
    assert emb.leave_one_out_distances[0] < info.threshold
    # the weighted centroid sits closer to the heavier reference, at the references' typical norm
    assert info.distance(merged, a) < info.distance(merged, b) < info.threshold
    assert np.linalg.norm(merged) == pytest.approx((np.linalg.norm(a) + 0.5 * np.linalg.norm(b)) / 1.5, rel=1e-5)
    for ref in obama.references:
        assert ref.quality and ref.quality.get("status")
        assert len(ref.kps5) == 5 and len(ref.landmarks) >= 5
        assert Image.open(io.BytesIO(ref.aligned_png)).size == (112, 112)
        assert Image.open(io.BytesIO(ref.head_crop)).size == (1024, 1024)
    import hashlib

    assert obama.references[0].source_sha256 == hashlib.sha256(Path(_faces() / "obama.jpg").read_bytes()).hexdigest()


def _faces() -> Path:
    import os

    return Path(os.environ.get("FLX_TESTDATA") or REPO.parent / "shared" / "testdata" / "faces")


def test_outlier_is_refused_then_kept_with_force(faces_dir, analyzer):
    refs = [faces_dir / "obama.jpg", faces_dir / "obama2.jpg", faces_dir / "biden.jpg"]
    with pytest.raises(InputError) as err:
        create_character("mixed", refs, None, analyzer)
    msg = str(err.value)
    m = re.search(r"biden\.jpg .*distance (\d+\.\d+)", msg)
    assert m and float(m.group(1)) > analyzer.info.threshold and "--force" in msg and "\n" not in msg

    kept = create_character("mixed", refs, None, analyzer, force=True)
    loo = kept.embeddings["dlib-resnet-v1"].leave_one_out_distances
    assert len(kept.references) == 3
    assert loo[2] == pytest.approx(float(m.group(1)), abs=1e-3)
    assert max(loo[:2]) < analyzer.info.threshold < loo[2]
    assert "overridden" in kept.change


def test_group_photo_needs_face_index(faces_dir, analyzer):
    with pytest.raises(AmbiguousFace, match="--face"):
        create_character("crowd", [faces_dir / "group_t1.jpg"], None, analyzer)
    ch = create_character("crowd", [RefSpec(faces_dir / "group_t1.jpg", 1.0, 2)], None, analyzer)
    assert ch.references[0].face_index == 2


def test_rgba_png_reference(faces_dir, analyzer, obama):
    ch = create_character("rgba", [faces_dir / "32bit.png"], None, analyzer)
    d = analyzer.info.distance(
        ch.embeddings["dlib-resnet-v1"].vector, obama.embeddings["dlib-resnet-v1"].per_reference[1]
    )
    assert d < 0.1  # 32bit.png is obama2.jpg with an alpha channel


def test_identity_reference_and_missing_encoder(obama, analyzer):
    ref = identity_reference(obama, analyzer.info)
    assert ref.embedding.dtype == np.float32 and ref.embedding.shape == (128,) and ref.name == "obama"
    assert ref.model_sha256 == analyzer.info.model_sha256
    other = dataclasses.replace(analyzer.info, encoder_id="arcface-x")
    with pytest.raises(InputError, match=r"flx character reembed obama --encoder arcface-x"):
        identity_reference(obama, other)


def test_reembed_from_stored_crops(obama, analyzer):
    new = reembed(obama, analyzer)
    assert new.version == obama.version + 1 and new.id == obama.id
    assert new.change == "re-embedded with dlib-resnet-v1"
    old_emb, new_emb = obama.embeddings["dlib-resnet-v1"], new.embeddings["dlib-resnet-v1"]
    for a, b in zip(old_emb.per_reference, new_emb.per_reference):
        assert analyzer.info.distance(a, b) < analyzer.info.threshold / 2  # same face, re-detected in the crop
    slim = from_bytes(to_bytes(obama, include_references=False)).character
    with pytest.raises(InputError, match="no stored reference crops"):
        reembed(slim, analyzer)


def test_real_character_export_import_export_identical(obama, tmp_path):
    with CharacterLibrary(tmp_path / "a.sqlite") as a:
        a.add(obama)
        a.export("obama", tmp_path / "one.flx")
    with CharacterLibrary(tmp_path / "b.sqlite") as b:
        b.import_file(tmp_path / "one.flx")
        b.export("obama", tmp_path / "two.flx")
        got = b.get("obama")
    assert (tmp_path / "one.flx").read_bytes() == (tmp_path / "two.flx").read_bytes()
    assert got.profile.model_extra["future_key"] == {"kept": True}
    assert got.references[1].quality == obama.references[1].quality


# ------------------------------------------------------------------------------------------------- CLI


def _flx(home: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "flx"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "engine.cli.main"]
    return subprocess.run([*cmd, "--home", str(home), *args], capture_output=True, text=True, timeout=120, check=False)


def test_cli_create_inspect_and_errors(faces_dir, tmp_path):
    home = tmp_path / "home"
    profile = tmp_path / "p.yaml"
    profile.write_text("hair_colour: black\ntags: [test]\nanchor_details:\n  - {description: mole, side: left}\n")
    r = _flx(home, "character", "create", "ob", "--ref", str(faces_dir / "obama.jpg"),
             "--ref", f"{faces_dir / 'obama2.jpg'}:0.5", "--profile", str(profile))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "quality" in r.stdout and "created" in r.stdout

    out = tmp_path / "ob.flx"
    assert _flx(home, "character", "export", "ob", str(out)).returncode == 0
    r = _flx(home, "character", "inspect", str(out))
    assert r.returncode == 0 and "sha256 verified" in r.stdout and "dlib-resnet-v1" in r.stdout

    r = _flx(home, "character", "list", "--tag", "test")
    assert r.returncode == 0 and "ob" in r.stdout

    bad = tmp_path / "bad.flx"
    bad.write_bytes(out.read_bytes()[:-100])
    group = ("character", "create", "y", "--ref", str(faces_dir / "group_t1.jpg"))
    for args in (
        ("character", "inspect", str(bad)),
        ("character", "create", "x", "--ref", str(tmp_path / "missing.jpg")),
        group,
        ("character", "create", "z", "--ref", str(faces_dir / "obama.jpg"), "--profile", str(tmp_path / "no.yaml")),
        ("character", "show", "nobody"),
    ):
        r = _flx(home, *args)
        assert r.returncode in (2, 3), (args, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
        if args is group:
            assert "--face" in r.stderr


def test_face_too_small_is_refused_unless_forced(tmp_path, faces_dir, analyzer):
    from PIL import Image

    from engine._core.errors import InputError
    from engine.characters import create_character

    small = tmp_path / "small.jpg"
    with Image.open(faces_dir / "obama.jpg") as im:
        # a 1/5-scale copy on a large canvas: the face is ~50 px wide, findable only with upsampling
        canvas = Image.new("RGB", (1200, 1200), (90, 90, 90))
        canvas.paste(im.convert("RGB").resize((im.width // 5, im.height // 5)), (500, 500))
        canvas.save(small, quality=95)
    with pytest.raises(InputError, match=r"small\.jpg is only \d+ px wide .*--force"):
        create_character("tiny-face", [small], None, analyzer)
    ch = create_character("tiny-face", [small], None, analyzer, force=True)
    assert ch.references[0].quality["checks"]
