"""Face analysis on the real test photos: identity distances, formats, face choice, pose, ArcFace backend."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine._core.errors import AmbiguousFace, FaceNotFound, InputError
from engine.identity.crops import head_and_shoulders_crop
from engine.identity.images import load_image
from engine.identity.registry import AnalyzerCache, available_encoders, get_analyzer
from engine.identity.select import choose_face

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def analyzer():
    return get_analyzer("dlib-resnet-v1")


@pytest.fixture(scope="module")
def emb(analyzer, faces_dir):
    """Embedding of the single (largest) face of a test photo, cached per module."""
    cache: dict[str, np.ndarray] = {}

    def _emb(name: str) -> np.ndarray:
        if name not in cache:
            faces = analyzer.analyze(load_image(faces_dir / name))
            assert faces, f"no face in {name}"
            cache[name] = max(faces, key=lambda f: f.area).embedding
        return cache[name]

    return _emb


def test_same_person_below_threshold_different_above(analyzer, emb):
    info = analyzer.info
    same = [info.distance(emb("obama.jpg"), emb("obama2.jpg")), info.distance(emb("obama.jpg"), emb("32bit.png"))]
    other = [info.distance(emb("obama.jpg"), emb("biden.jpg")), info.distance(emb("obama2.jpg"), emb("biden.jpg"))]
    assert all(d < info.threshold for d in same), same
    assert all(d > info.threshold for d in other), other
    # the RGBA PNG is obama2.jpg with an alpha channel: nearly the same vector
    assert info.distance(emb("obama2.jpg"), emb("32bit.png")) < 0.05


def test_group_photo_faces_are_all_other_people(analyzer, emb, faces_dir):
    # upsample=1: the ~55-degree-turned face scores 0.21 at upsample 0, below the 0.3 cut, and ~0.4 at 1
    faces = analyzer.analyze(load_image(faces_dir / "group_t1.jpg"), upsample=1)
    assert len(faces) == 6
    for f in faces:
        assert analyzer.info.distance(f.embedding, emb("obama.jpg")) > analyzer.info.threshold
    with pytest.raises(AmbiguousFace, match=r"--face N") as e:
        choose_face(faces, None, "group_t1.jpg")
    assert "6 faces" in str(e.value) and all(f"#{i} box=(" in str(e.value) for i in range(6))
    assert choose_face(faces, 2, "group_t1.jpg") is faces[2]
    with pytest.raises(InputError, match="out of range"):
        choose_face(faces, len(faces), "group_t1.jpg")


def test_no_face_is_a_clear_error(analyzer):
    blank = np.full((400, 400, 3), 128, np.uint8)
    faces = analyzer.analyze(blank)
    assert faces == []
    with pytest.raises(FaceNotFound, match="no face found in blank.png"):
        choose_face(faces, None, "blank.png")


def test_face_fields_are_consistent(analyzer, faces_dir):
    img = load_image(faces_dir / "obama.jpg")
    (face,) = analyzer.analyze(img)
    x0, y0, x1, y1 = face.box
    assert 0 <= x0 < x1 <= img.shape[1] and 0 <= y0 < y1 <= img.shape[0]
    assert face.landmarks.shape == (68, 2) and face.kps5.shape == (5, 2)
    assert face.kps5[0, 0] < face.kps5[1, 0]  # image-left eye first
    assert face.aligned.shape == (112, 112, 3) and face.aligned.dtype == np.uint8
    assert face.embedding.shape == (128,) and face.encoder_id == "dlib-resnet-v1"
    assert abs(face.yaw) < 15  # frontal portrait
    crop = head_and_shoulders_crop(img, face, size=256)
    assert crop.shape == (256, 256, 3)


def test_mirrored_photo_mirrors_yaw(analyzer, faces_dir):
    img = load_image(faces_dir / "obama2.jpg")
    (f,) = analyzer.detect(img)
    (m,) = analyzer.detect(np.ascontiguousarray(img[:, ::-1]))
    assert abs(f.yaw) > 15, "obama2.jpg is a turned head"
    assert np.sign(f.yaw) == -np.sign(m.yaw)
    assert abs(f.yaw + m.yaw) < 10


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_image_formats_load_to_rgb(faces_dir, tmp_path, analyzer, emb):
    src = Image.open(faces_dir / "obama.jpg").convert("RGB").resize((455, 568))
    rgba = load_image(faces_dir / "32bit.png")
    assert rgba.ndim == 3 and rgba.shape[2] == 3 and rgba.dtype == np.uint8
    paths = {
        "palette": _save(src.convert("P", palette=Image.ADAPTIVE), tmp_path / "p.png"),
        "grey16": _save(Image.fromarray(np.asarray(src.convert("L"), np.uint16) * 257), tmp_path / "g16.png"),
        "webp": _save(src, tmp_path / "w.webp", quality=90),
    }
    for kind, p in paths.items():
        arr = load_image(p)
        assert arr.shape == (568, 455, 3) and arr.dtype == np.uint8, kind
        assert len(analyzer.detect(arr)) == 1, kind

    # EXIF orientation 6 (rotate 90 CW to view): store the pixels rotated the other way
    rotated = src.rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    p = _save(rotated, tmp_path / "exif.jpg", exif=exif.tobytes(), quality=95)
    upright = load_image(p)
    assert upright.shape == (568, 455, 3)
    (face,) = analyzer.analyze(upright)
    assert analyzer.info.distance(face.embedding, emb("obama.jpg")) < 0.15


def test_unreadable_inputs_raise_one_line(tmp_path, faces_dir):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\x00not an image" * 100)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((faces_dir / "obama.jpg").read_bytes()[:5000])
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for p in (garbage, truncated, text, tmp_path / "missing.jpg"):
        with pytest.raises(InputError) as e:
            load_image(p)
        assert "\n" not in str(e.value) and p.name in str(e.value)


def test_registry_and_cache():
    assert available_encoders()[0] == "dlib-resnet-v1"
    cache = AnalyzerCache()
    assert cache.get() is cache.get("dlib-resnet-v1")
    with pytest.raises(InputError, match="unknown encoder"):
        get_analyzer("no-such-encoder")
    with pytest.raises(InputError, match="unknown encoder"):
        get_analyzer("arcface-antelopev2-glintr100")  # manifest encoders need the settings (the store)


def test_tiny_arcface_loads_through_insightface(tmp_path, faces_dir, analyzer):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from tiny_weights.arcface import build_tiny_arcface
    finally:
        sys.path.remove(str(REPO / "scripts"))
    from insightface.model_zoo import get_model

    path = build_tiny_arcface(tmp_path / "pack", seed=0)
    again = build_tiny_arcface(tmp_path / "pack2", seed=0)
    assert path.read_bytes() == again.read_bytes()  # deterministic from the seed
    assert type(get_model(str(path))).__name__ == "ArcFaceONNX"

    from engine.identity.insightface_backend import InsightFaceAnalyzer

    arc = InsightFaceAnalyzer(tmp_path / "pack", encoder_id="test-arcface", recognition_file="glintr100.onnx")
    assert arc.info.metric == "cosine" and arc.info.dim == 512
    assert arc.info.model_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    img = load_image(faces_dir / "group_t1.jpg")
    faces = arc.analyze(img)  # no SCRFD in the tiny pack: dlib detection, ArcFace embedding (batched)
    assert len(faces) >= 2
    vecs = np.stack([f.embedding for f in faces])
    assert vecs.shape == (len(faces), 512) and np.isfinite(vecs).all()
    assert all(f.encoder_id == "test-arcface" for f in faces)
    # the batch path gives the same vector as a single call
    single = arc.embed(img, [faces[1]])[0].embedding
    np.testing.assert_allclose(single, vecs[1], rtol=1e-4, atol=1e-5)
