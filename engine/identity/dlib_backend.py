"""dlib face analysis: HOG detector, 68/5-point landmarks, ResNet 128-d identity embedding.

The weights ship inside the `face_recognition_models` PyPI package, so this backend works offline on
any machine with no download: it is the engine's default encoder.

Licences: the HOG detector, the 5-point predictor and the ResNet encoder are CC0; the 68-point predictor was
trained on iBUG 300-W, whose terms exclude commercial use. `landmarks="5"` (what commercial mode selects) never
loads the 68-point model: the ArcFace points come from the 5-point model (`geometry.kps5_from_dlib5`), the pose
from those points, and the eye-openness check is reported as not available. The identity vectors are the same
in both modes: dlib's encoder always aligns on the 5-point shape.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine._core.errors import ModelNotFound

from .geometry import eye_aspect_ratios, head_pose_68, kps5_from_68, kps5_from_dlib5, norm_crop, pose_from_kps5
from .images import to_rgb_array
from .types import EncoderInfo, Face

DLIB_ENCODER_ID = "dlib-resnet-v1"

RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_68_FILE = "shape_predictor_68_face_landmarks.dat"
LANDMARKS_5_FILE = "shape_predictor_5_face_landmarks.dat"

DLIB_ENCODER_INFO = EncoderInfo(encoder_id=DLIB_ENCODER_ID, dim=128, metric="euclidean", threshold=0.6)
"""dlib ResNet v1 (face_recognition's default encoding: 5-point alignment, 1 jitter); `model_sha256` is filled per
analyzer from the model file.

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
    """The dlib model objects, loaded together; the 68-point predictor only when asked for."""

    def __init__(self, models_dir: Path, *, with_68: bool):
        import dlib

        files = [LANDMARKS_5_FILE, RESNET_FILE] + ([LANDMARKS_68_FILE] if with_68 else [])
        for name in files:
            if not (models_dir / name).is_file():
                raise ModelNotFound(
                    f"dlib model file {models_dir / name} is missing: reinstall `face-recognition-models==0.3.0`"
                )
        self.detector = dlib.get_frontal_face_detector()
        self.sp68 = dlib.shape_predictor(str(models_dir / LANDMARKS_68_FILE)) if with_68 else None
        self.sp5 = dlib.shape_predictor(str(models_dir / LANDMARKS_5_FILE))
        self.rec = dlib.face_recognition_model_v1(str(models_dir / RESNET_FILE))


class DlibFaceAnalyzer:
    """`FaceAnalyzer` on dlib: HOG detection + 68- or 5-point landmarks + ResNet 128-d embedding.

    Models load on first use (once per instance, under a lock), so constructing one is free.

    Args:
        min_score (`float`, *optional*, defaults to 0.3):
            Drop HOG detections scoring below this (the SVM margin). Real faces in the test photos score
            0.9-2.6 (the group photo's ~55-degree-turned face ~0.3-0.5); background patches (a suit) ~0.1.
        models_dir (`Path`, *optional*):
            Folder with dlib's `.dat` files; defaults to the `face_recognition_models` package's.
        num_jitters (`int`, *optional*, defaults to 1):
            Re-sampled crops averaged per embedding (1 = face_recognition's default; 10+ is slower, steadier).
        landmarks (`str`, *optional*, defaults to `"68"`):
            `"68"`: the iBUG 300-W-trained 68-point model (non-commercial terms); `"5"`: CC0 models only.
        max_detect_side (`int`, *optional*, defaults to 3072):
            Larger images are searched for faces on a copy downscaled to this longest side (landmarks and crops
            still come from the full image), so a 9400x9400 photo costs what a 3072x3072 one does.
        embedder (`str`, *optional*, defaults to `"torch"`):
            `"torch"`: dlib's network run in PyTorch from dlib's own weights (same vectors to ~1e-6, ~8x faster
            on CPU; `dlib_torch.py`); `"dlib"`: dlib's own `compute_face_descriptor`.

    Examples:
        ```py
        >>> analyzer = DlibFaceAnalyzer()
        >>> faces = analyzer.analyze(load_image("obama.jpg"))
        >>> faces[0].embedding.shape
        (128,)
        ```
    """

    def __init__(
        self,
        *,
        min_score: float = 0.3,
        models_dir: Path | None = None,
        num_jitters: int = 1,
        landmarks: str = "68",
        max_detect_side: int = 3072,
        embedder: str = "torch",
    ):
        if landmarks not in ("68", "5"):
            raise ValueError(f"landmarks must be '68' or '5', not {landmarks!r}")
        if embedder not in ("torch", "dlib"):
            raise ValueError(f"embedder must be 'torch' or 'dlib', not {embedder!r}")
        self.min_score = float(min_score)
        self.models_dir = Path(models_dir) if models_dir else None
        self.num_jitters = int(num_jitters)
        self.landmarks = landmarks
        self.max_detect_side = int(max_detect_side)
        self.embedder = embedder
        self._models: _DlibModels | None = None
        self._info: EncoderInfo | None = None
        self._torch = None
        self._lock = threading.Lock()

    @property
    def commercial_safe(self) -> bool:
        """True when only the CC0 models are used (no 68-point predictor)."""
        return self.landmarks == "5"

    @property
    def info(self) -> EncoderInfo:
        """The encoder record, with the sha256 of the ResNet file that makes the vectors (hashed once per process)."""
        if self._info is None:
            from .registry import file_sha256

            sha = file_sha256((self.models_dir or face_recognition_models_dir()) / RESNET_FILE)
            self._info = dataclasses.replace(DLIB_ENCODER_INFO, model_sha256=sha)
        return self._info

    @property
    def models(self) -> _DlibModels:
        if self._models is None:
            with self._lock:
                if self._models is None:
                    self._models = _DlibModels(
                        self.models_dir or face_recognition_models_dir(), with_68=self.landmarks == "68"
                    )
        return self._models

    def detect(self, image: np.ndarray, *, upsample: int = 0) -> list[Face]:
        """Faces scoring >= `min_score`, best first, with landmarks, kps5, pose and 112x112 aligned crop.

        HOG costs ~55 ms per megapixel at upsample 0 and ~4x that per upsample step; images over
        `max_detect_side` are searched on a downscaled copy and the boxes scaled back. `upsample=1` finds faces
        down to ~40 px (of the searched copy).
        """
        img = to_rgb_array(image)
        m = self.models
        h, w = img.shape[:2]
        scale = 1.0
        search = img
        if self.max_detect_side > 0 and max(h, w) > self.max_detect_side:
            import cv2

            scale = max(h, w) / self.max_detect_side
            size = (max(1, round(w / scale)), max(1, round(h / scale)))
            search = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        rects, scores, _ = m.detector.run(search, int(upsample), min(0.0, self.min_score))
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        faces: list[Face] = []
        for i in order:
            score = float(scores[i])
            if score < self.min_score:
                continue
            r = rects[i]
            box = tuple(round(v * scale) for v in (r.left(), r.top(), r.right(), r.bottom()))
            faces.append(self.face_from_box(img, box, score, len(faces)))
        return faces

    def face_from_box(self, image: np.ndarray, box: Sequence[float], score: float = 1.0, index: int = 0) -> Face:
        """A `Face` (landmarks, kps5, pose, aligned crop) for a detector box in `image`'s coordinates."""
        import dlib

        img = to_rgb_array(image)
        x0, y0, x1, y1 = (round(v) for v in box)
        rect = dlib.rectangle(x0, y0, x1, y1)
        m = self.models
        predictor = m.sp68 if self.landmarks == "68" else m.sp5
        pts = np.array([(p.x, p.y) for p in predictor(img, rect).parts()], dtype=np.float32)
        return self._make_face(img, index, (x0, y0, x1, y1), score, pts)

    def _make_face(self, img: np.ndarray, index: int, raw_box: tuple[int, int, int, int], score: float, pts) -> Face:
        h, w = img.shape[:2]
        x0, y0, x1, y1 = raw_box
        box = (float(max(x0, 0)), float(max(y0, 0)), float(min(x1, w)), float(min(y1, h)))
        extra = {"raw_box": tuple(int(v) for v in raw_box), "backend": "dlib", "landmarks": self.landmarks}
        if self.landmarks == "68":
            kps5 = kps5_from_68(pts)
            yaw, pitch, roll = head_pose_68(pts, (h, w))
            extra["eye_aspect_ratio"] = eye_aspect_ratios(pts)
        else:
            kps5 = kps5_from_dlib5(pts)
            yaw, pitch, roll = pose_from_kps5(kps5)
            extra["yaw_note"] = "approximate: from 5 points (commercial mode)"
            extra["unavailable"] = {
                "eyes_visible": "not available in commercial mode (needs the 68-point landmark model, whose "
                "training data excludes commercial use)"
            }
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
            extra=extra,
        )

    def _torch_embedder(self):
        if self._torch is None and self.embedder == "torch" and self.num_jitters == 1:
            try:
                from .dlib_torch import TorchDlibEmbedder

                self._torch = TorchDlibEmbedder(self)
            except (ImportError, OSError, ValueError):  # no torch, or an unexpected model file: dlib itself
                self._torch = False
        return self._torch or None

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> list[Face]:
        """Fill each face's 128-d embedding (5-point alignment on the detector box, as face_recognition does)."""
        import dlib

        img = to_rgb_array(image)
        faces = list(faces)
        fast = self._torch_embedder()
        if fast is not None:
            return fast.embed(img, faces)
        m = self.models
        for face in faces:
            x0, y0, x1, y1 = face.extra.get("raw_box") or tuple(round(v) for v in face.box)
            shape = m.sp5(img, dlib.rectangle(int(x0), int(y0), int(x1), int(y1)))
            vec = m.rec.compute_face_descriptor(img, shape, self.num_jitters)
            face.embedding = np.asarray(vec, dtype=np.float32)
            face.encoder_id = self.info.encoder_id
        return faces

    def analyze(self, image: np.ndarray, *, upsample: int = 0) -> list[Face]:
        img = to_rgb_array(image)
        return self.embed(img, self.detect(img, upsample=upsample))
