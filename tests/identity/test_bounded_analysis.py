"""Analysis cost is bounded by the engine, not by the photo, and every path gets the fast embedder (regressions).

Before: a valid 9400x9400 black PNG took 100 s and 4.3 GB before "no face found" (HOG, then HOG with upsampling,
on 88 megapixels); the PyTorch port of dlib's network sped up scoring only, not character creation.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine._core.errors import FaceNotFound, InputError
from engine.characters import create_character
from engine.characters.schema import finite
from engine.identity.dlib_backend import DlibFaceAnalyzer
from engine.identity.images import load_image


class _SpyDetector:
    """The real HOG detector, recording the size of every image it is run on."""

    def __init__(self, real):
        self.real, self.sizes = real, []

    def run(self, img, upsample, threshold):
        self.sizes.append((img.shape[1], img.shape[0], upsample))
        return self.real.run(img, upsample, threshold)


def test_huge_photos_are_searched_on_a_bounded_copy(tmp_path, faces_dir):
    a = DlibFaceAnalyzer()
    spy = _SpyDetector(a.models.detector)
    a.models.detector = spy
    black = tmp_path / "black.png"
    Image.new("RGB", (9400, 9400)).save(black)
    with pytest.raises(FaceNotFound):
        create_character("nobody", [black], None, a)
    assert spy.sizes and all(max(w, h) <= a.max_detect_side for w, h, _ in spy.sizes)
    # a face in a big photo is still found, in the big photo's coordinates
    small = load_image(faces_dir / "obama.jpg")
    big = np.asarray(Image.fromarray(small).resize((small.shape[1] * 4, small.shape[0] * 4), Image.LANCZOS))
    f_small = a.detect(small)[0]
    f_big = a.detect(big)[0]
    from engine.scoring.consistency import iou

    assert iou(np.asarray(f_big.box) / 4, f_small.box) > 0.75  # HOG boxes shift a little with the search scale
    assert f_big.aligned.shape == (112, 112, 3)


def test_character_creation_uses_the_fast_embedder(faces_dir):
    fast, native = DlibFaceAnalyzer(), DlibFaceAnalyzer(embedder="dlib")
    calls = []
    rec = fast.models.rec

    class _NoNative:
        def compute_face_descriptor(self, *a, **k):
            calls.append(a)
            return rec.compute_face_descriptor(*a, **k)

    fast.models.rec = _NoNative()
    a = create_character("ava", [faces_dir / "obama.jpg", faces_dir / "obama2.jpg"], None, fast)
    b = create_character("ava", [faces_dir / "obama.jpg", faces_dir / "obama2.jpg"], None, native)
    assert calls == []  # dlib's slow descriptor was never called...
    np.testing.assert_allclose(  # ...and the identity is dlib's own
        a.embeddings["dlib-resnet-v1"].vector, b.embeddings["dlib-resnet-v1"].vector, atol=1e-5
    )


def test_measurements_that_are_not_numbers_are_errors_not_zeros():
    assert finite([1, 2.5]) == [1.0, 2.5]
    for bad in (float("nan"), float("inf")):
        with pytest.raises(InputError, match="measurement failed"):
            finite([1.0, bad], "face box")
