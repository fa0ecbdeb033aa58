"""Commercial mode: the embedded face backend on its CC0 models only, and outputs that say which mode made them.

The dlib 68-point predictor was trained on iBUG 300-W (non-commercial terms); the HOG detector, the 5-point predictor
and the ResNet encoder are CC0. In commercial mode the 68-point model is never loaded, checks that need it say so
instead of passing, and the identity vectors are unchanged (dlib's encoder aligns on the 5-point shape anyway).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine._core.settings import EngineSettings
from engine.identity.dlib_backend import DlibFaceAnalyzer
from engine.identity.images import load_image
from engine.identity.quality import check_reference
from engine.identity.registry import get_analyzer

PHOTOS = ["obama.jpg", "obama2.jpg", "biden.jpg", "group_t1.jpg"]


@pytest.fixture(scope="module")
def both():
    return DlibFaceAnalyzer(landmarks="68"), DlibFaceAnalyzer(landmarks="5")


def test_commercial_setting_selects_the_cc0_models(tmp_path):
    a = get_analyzer(settings=EngineSettings(home=tmp_path, commercial_use=True))
    assert isinstance(a, DlibFaceAnalyzer) and a.commercial_safe
    assert a.models.sp68 is None  # the iBUG-trained file is never even opened
    assert not get_analyzer(settings=EngineSettings(home=tmp_path)).commercial_safe


def test_cc0_mode_finds_the_same_faces_and_the_same_identity(both, faces_dir):
    full, cc0 = both
    for name in PHOTOS:
        img = load_image(faces_dir / name)
        fa, fb = full.analyze(img, upsample=1), cc0.analyze(img, upsample=1)
        assert [f.box for f in fa] == [f.box for f in fb]  # same detector
        for x, y in zip(fa, fb):
            assert y.landmarks.shape == (5, 2) and y.extra["landmarks"] == "5"
            eye = float(np.linalg.norm(x.kps5[0] - x.kps5[1]))
            err = np.linalg.norm(x.kps5 - y.kps5, axis=1) / eye
            assert err[:2].max() < 0.12 and err[2] < 0.2 and err[3:].max() < 0.45, (name, err)
            if abs(x.yaw) > 20:  # 5 points give a rough yaw only; a clearly turned head turns the same way
                assert np.sign(y.yaw) == np.sign(x.yaw), (name, x.yaw, y.yaw)
            np.testing.assert_allclose(x.embedding, y.embedding, atol=1e-6)  # identity is unchanged


def test_checks_that_need_68_points_say_so(both, faces_dir):
    full, cc0 = both
    img = load_image(faces_dir / "obama.jpg")
    face = cc0.analyze(img)[0]
    report = check_reference(img, [face], face)
    eyes = report.check("eyes_visible")
    assert eyes.status == "skip" and "not available in commercial mode" in eyes.message
    assert "approximate" in report.check("yaw").message
    assert report.status in ("pass", "warn")  # a skipped check neither passes nor fails the photo
    f68 = full.analyze(img)[0]
    assert check_reference(img, [f68], f68).check("eyes_visible").status == "pass"


def test_outputs_record_the_mode(tmp_path, faces_dir):
    from engine.api import Engine

    for commercial in (False, True):
        eng = Engine(EngineSettings(home=tmp_path / str(commercial), commercial_use=commercial))
        report = eng.score([faces_dir / "obama2.jpg"], reference_photos=[faces_dir / "obama.jpg"])
        assert report.commercial_use is commercial
        assert report.encoder.model_sha256 == eng.analyzer().info.model_sha256
