"""dlib's face-recognition network run in PyTorch must give dlib's own vectors (real models, real photos)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.identity.dlib_torch import TorchDlibEmbedder, _read_layers
from engine.identity.images import load_image
from engine.scoring import reference_from_photos, score_frames

PHOTOS = ["obama.jpg", "obama2.jpg", "biden.jpg", "group_t1.jpg", "32bit.png", "obama_partial_face.jpg"]


@pytest.fixture(scope="module")
def analyzer():
    from engine.identity.dlib_backend import DlibFaceAnalyzer

    return DlibFaceAnalyzer(embedder="dlib")  # dlib's own compute_face_descriptor, the reference


@pytest.fixture(scope="module")
def embedder(analyzer):
    assert TorchDlibEmbedder.supports(analyzer)
    return TorchDlibEmbedder(analyzer)


def test_torch_port_matches_dlib_descriptor(faces_dir, analyzer, embedder):
    n_faces = 0
    for name in PHOTOS:
        img = load_image(faces_dir / name)
        faces = analyzer.detect(img)
        chips = embedder.chips(img, faces)
        ours = embedder.embed_chips(chips)
        theirs = np.array([np.asarray(analyzer.models.rec.compute_face_descriptor(c)) for c in chips])
        assert ours.shape == theirs.shape == (len(faces), 128)
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
        # and the chip is the one compute_face_descriptor extracts itself from the image + 5-point shape
        native = [f.embedding for f in analyzer.embed(img, [type(f)(**vars(f)) for f in faces])]
        np.testing.assert_allclose(ours, np.array(native), atol=1e-4)
        n_faces += len(faces)
    assert n_faces >= 8  # the group photo contributes several faces


def test_embed_fills_faces_like_the_analyzer(faces_dir, analyzer, embedder):
    img = load_image(faces_dir / "group_t1.jpg")
    a, b = analyzer.detect(img), analyzer.detect(img)
    analyzer.embed(img, a)
    embedder.embed(img, b)
    for x, y in zip(a, b):
        assert y.encoder_id == x.encoder_id == analyzer.info.encoder_id
        assert abs(analyzer.info.distance(x.embedding, y.embedding)) < 1e-4
    # distances between different people are the same under both paths
    d_native = analyzer.info.distance(a[0].embedding, a[1].embedding)
    d_torch = analyzer.info.distance(b[0].embedding, b[1].embedding)
    assert d_native > analyzer.info.threshold and abs(d_native - d_torch) < 1e-4


def test_opens2v_same_numbers_with_either_embedder(faces_dir, analyzer):
    from engine.identity.dlib_backend import DlibFaceAnalyzer

    torch_analyzer = DlibFaceAnalyzer()  # the default: the network in PyTorch
    assert torch_analyzer._torch_embedder() is not None
    reference = reference_from_photos([faces_dir / "obama.jpg"], analyzer)
    frames = [load_image(faces_dir / n) for n in PHOTOS]
    fast = score_frames(frames, 24.0, reference, torch_analyzer, "opens2v").media[0]
    native = score_frames(frames, 24.0, reference, analyzer, "opens2v").media[0]
    assert [f.index for f in fast.frames] == [f.index for f in native.frames] == list(range(len(PHOTOS)))
    for x, y in zip(fast.frames, native.frames):
        assert (x.distance is None) == (y.distance is None)
        if x.distance is not None:
            assert abs(x.distance - y.distance) < 1e-4 and abs(x.similarity - y.similarity) < 1e-4
            assert x.passes == y.passes
    assert abs(fast.summary.facesim - native.summary.facesim) < 1e-4
    assert fast.summary.detection_rate == native.summary.detection_rate


def test_rejects_other_files(tmp_path):
    bad = tmp_path / "not_dlib.dat"
    bad.write_bytes(b"\x01\x05hello" + bytes(1000))
    with pytest.raises(ValueError):
        _read_layers(bad)
