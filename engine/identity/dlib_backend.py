"""dlib face analysis: HOG detector, 68/5-point landmarks, ResNet 128-d identity embedding.

The weights ship inside the `face_recognition_models` PyPI package, so this backend works offline on
any machine with no download: it is the engine's default encoder.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine._core.errors import ModelNotFound

from .geometry import eye_aspect_ratios, head_pose_68, kps5_from_68, norm_crop
from .images import to_rgb_array
from .types import EncoderInfo, Face

DLIB_ENCODER_ID = "dlib-resnet-v1"

DLIB_ENCODER_INFO = EncoderInfo(encoder_id=DLIB_ENCODER_ID, dim=128, metric="euclidean", threshold=0.6)
"""dlib ResNet v1 (face_recognition's default encoding: 5-point alignment, 1 jitter).

Threshold 0.6 Euclidean is dlib's published cut (99.38% on LFW). Checked on the test photos
(testdata/faces): same person 0.24-0.43, different people 0.63-0.97, so 0.6 separates them with
margin on both sides. dlib vectors are not zero-centred (cosines of any two faces are 0.78-0.99):
compare them by Euclidean distance only.
"""


def face_recognition_models_dir() -> Path:
    """The `models/` folder of the `face_recognition_models` package, found without importing it.

    Importing it needs `pkg_resources`, which setuptools >= 81 no longer ships.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "dlib face models are missing: install them with `pip install face-recognition-models==0.3.0`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class _DlibModels:
    """The four dlib model objects, loaded together."""

    def __init__(self, models_dir: Path):
        import dlib

        files = {
            "sp68": "shape_predictor_68_face_landmarks.dat",
            "sp5": "shape_predictor_5_face_landmarks.dat",
            "rec": "dlib_face_recognition_resnet_model_v1.dat",
        }
        for name in files.values():
            if not (models_dir / name).is_file():
                raise ModelNotFound(
                    f"dlib model file {models_dir / name} is missing: reinstall `face-recognition-models==0.3.0`"
                )
        self.detector = dlib.get_frontal_face_detector()
        self.sp68 = dlib.shape_predictor(str(models_dir / files["sp68"]))
        self.sp5 = dlib.shape_predictor(str(models_dir / files["sp5"]))
        self.rec = dlib.face_recognition_model_v1(str(models_dir / files["rec"]))


class DlibFaceAnalyzer:
    """`FaceAnalyzer` on dlib: HOG detection + 68-point landmarks + ResNet 128-d embedding.

    Models load on first use (once per instance, under a lock), so constructing one is free.

    Args:
        min_score (`float`, *optional*, defaults to 0.3):
            Drop HOG detections scoring below this (the SVM margin). Real faces in the test photos score
            0.9-2.6 (the group photo's ~55-degree-turned face ~0.3-0.5); background patches (a suit) ~0.1.
        models_dir (`Path`, *optional*):
            Folder with dlib's `.dat` files; defaults to the `face_recognition_models` package's.
        num_jitters (`int`, *optional*, defaults to 1):
            Re-sampled crops averaged per embedding (1 = face_recognition's default; 10+ is slower, steadier).

    Examples:
        ```py
        >>> analyzer = DlibFaceAnalyzer()
        >>> faces = analyzer.analyze(load_image("obama.jpg"))
        >>> faces[0].embedding.shape
        (128,)
        ```
    """

    info: EncoderInfo = DLIB_ENCODER_INFO

    def __init__(self, *, min_score: float = 0.3, models_dir: Path | None = None, num_jitters: int = 1):
        self.min_score = float(min_score)
        self.models_dir = Path(models_dir) if models_dir else None
        self.num_jitters = int(num_jitters)
        self._models: _DlibModels | None = None
        self._lock = threading.Lock()

    @property
    def models(self) -> _DlibModels:
        if self._models is None:
            with self._lock:
                if self._models is None:
                    self._models = _DlibModels(self.models_dir or face_recognition_models_dir())
        return self._models

    def detect(self, image: np.ndarray, *, upsample: int = 0) -> list[Face]:
        """Faces scoring >= `min_score`, best first, with 68 landmarks, kps5, pose and 112x112 aligned crop.

        For speed on large frames, downscale before calling (HOG costs ~55 ms per megapixel at upsample 0,
        ~4x that per upsample step) and scale the boxes back; `upsample=1` finds faces down to ~40 px.
        """
        img = to_rgb_array(image)
        m = self.models
        rects, scores, _ = m.detector.run(img, int(upsample), min(0.0, self.min_score))
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        faces: list[Face] = []
        for i in order:
            score = float(scores[i])
            if score < self.min_score:
                continue
            r = rects[i]
            shape = m.sp68(img, r)
            pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
            faces.append(self._make_face(img, len(faces), (r.left(), r.top(), r.right(), r.bottom()), score, pts))
        return faces

    def face_from_box(self, image: np.ndarray, box: Sequence[float], score: float = 1.0, index: int = 0) -> Face:
        """A `Face` (68 landmarks, kps5, pose, aligned crop) for a box found by another detector."""
        img = to_rgb_array(image)
        import dlib

        x0, y0, x1, y1 = (round(v) for v in box)
        pts = np.array(
            [(p.x, p.y) for p in self.models.sp68(img, dlib.rectangle(x0, y0, x1, y1)).parts()], dtype=np.float32
        )
        return self._make_face(img, index, (x0, y0, x1, y1), score, pts)

    def _make_face(self, img: np.ndarray, index: int, raw_box: tuple[int, int, int, int], score: float, pts) -> Face:
        h, w = img.shape[:2]
        x0, y0, x1, y1 = raw_box
        box = (float(max(x0, 0)), float(max(y0, 0)), float(min(x1, w)), float(min(y1, h)))
        kps5 = kps5_from_68(pts)
        yaw, pitch, roll = head_pose_68(pts, (h, w))
        ear_l, ear_r = eye_aspect_ratios(pts)
        return Face(
            index=index,
            box=box,
            score=score,
            landmarks=pts,
            kps5=kps5,
            yaw=yaw,
            pitch=pitch,
            roll=roll,
            aligned=norm_crop(img, kps5),
            extra={"raw_box": tuple(int(v) for v in raw_box), "eye_aspect_ratio": (ear_l, ear_r), "backend": "dlib"},
        )

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> list[Face]:
        """Fill each face's 128-d embedding (5-point alignment on the detector box, as face_recognition does)."""
        import dlib

        img = to_rgb_array(image)
        m = self.models
        for face in faces:
            x0, y0, x1, y1 = face.extra.get("raw_box") or tuple(round(v) for v in face.box)
            shape = m.sp5(img, dlib.rectangle(int(x0), int(y0), int(x1), int(y1)))
            vec = m.rec.compute_face_descriptor(img, shape, self.num_jitters)
            face.embedding = np.asarray(vec, dtype=np.float32)
            face.encoder_id = self.info.encoder_id
        return list(faces)

    def analyze(self, image: np.ndarray, *, upsample: int = 0) -> list[Face]:
        img = to_rgb_array(image)
        return self.embed(img, self.detect(img, upsample=upsample))
