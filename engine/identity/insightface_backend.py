"""insightface ArcFace ONNX backend (the workstation encoder): SCRFD detection + ArcFace 512-d embedding.

Loaded from a weights-store folder (never from ~/.insightface): `flx weights fetch antelopev2` puts the
pack there and the store verifies it. Runs on CUDA through onnxruntime-gpu when available, else CPU.
The insightface packs are licensed for non-commercial research only (see weights_manifest.json).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine._core.errors import ModelNotFound

from .geometry import norm_crop, pose_from_kps5
from .images import to_rgb_array
from .types import EncoderInfo, Face, FaceAnalyzer

ARCFACE_SAME_PERSON_SIMILARITY = 0.35
"""Cosine similarity above which two ArcFace (glintr100 / w600k_r50) embeddings are taken as one person.

Not calibrated here: no ArcFace pack can be downloaded on the build machines. 0.35 sits between the
values commonly used with ArcFace: similarity 0.32 (deepface's ArcFace cosine-distance cut 0.68,
`deepface/config/threshold.py`), 0.28 (best LFW accuracy cut in Face-Robustness-Benchmark), ~0.4 in
verification demos;
re-calibrate with `flx score` on your own same/different pairs once the pack is installed. As a distance
(1 - cosine) the threshold is 0.65.
"""


def _providers() -> list[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


class InsightFaceAnalyzer:
    """`FaceAnalyzer` over an insightface pack folder.

    Args:
        pack_dir (`Path`): folder with the pack's ONNX files (from the weights store).
        encoder_id (`str`): the id recorded with embeddings (the registry passes it).
        recognition_file (`str`): ArcFace model file in the pack (e.g. `glintr100.onnx`).
        detector_file (`str`, *optional*): SCRFD detector in the pack; when absent, `detector` is used.
        detector (`FaceAnalyzer`, *optional*): fallback detector (default: dlib HOG) for packs without one.
        det_size (`int`, defaults to 640): SCRFD input size.
        model_sha256 (`str`, *optional*): sha256 of the recognition file (from the weights lock); hashed here if absent.
        commercial_use (`bool`, defaults to `False`): a fallback dlib detector runs on its CC0 models only.
    """

    def __init__(
        self,
        pack_dir: Path,
        *,
        encoder_id: str,
        recognition_file: str,
        detector_file: str | None = None,
        detector: FaceAnalyzer | None = None,
        det_size: int = 640,
        det_thresh: float = 0.5,
        model_sha256: str | None = None,
        commercial_use: bool = False,
    ):
        self.pack_dir = Path(pack_dir)
        rec = self.pack_dir / recognition_file
        if not rec.is_file():
            raise ModelNotFound(f"{rec} is missing: fetch the insightface pack with `flx weights fetch`")
        self.recognition_path = rec
        if model_sha256 is None:
            from .registry import file_sha256

            model_sha256 = file_sha256(rec)
        self.commercial_use = bool(commercial_use)
        det = self.pack_dir / detector_file if detector_file else None
        self.detector_path = det if det is not None and det.is_file() else None
        self._fallback = detector
        self.det_size = int(det_size)
        self.det_thresh = float(det_thresh)
        self._rec = None
        self._det = None
        self._lock = threading.Lock()
        self.info = EncoderInfo(
            encoder_id=encoder_id,
            dim=512,
            metric="cosine",
            threshold=1.0 - ARCFACE_SAME_PERSON_SIMILARITY,
            model_sha256=model_sha256,
        )

    def _load(self) -> None:
        with self._lock:
            if self._rec is not None:
                return
            from insightface.model_zoo import get_model

            providers = _providers()
            rec = get_model(str(self.recognition_path), providers=providers)
            if rec is None or rec.taskname != "recognition":
                raise ModelNotFound(f"{self.recognition_path} is not an ArcFace recognition model")
            rec.prepare(ctx_id=0 if "CUDAExecutionProvider" in providers else -1)
            if self.detector_path is not None:
                det = get_model(str(self.detector_path), providers=providers)
                det.prepare(ctx_id=0, input_size=(self.det_size, self.det_size), det_thresh=self.det_thresh)
                self._det = det
            elif self._fallback is None:
                from .dlib_backend import DlibFaceAnalyzer

                self._fallback = DlibFaceAnalyzer(landmarks="5" if self.commercial_use else "68")
            dim = int(rec.session.get_outputs()[0].shape[-1])
            self.info = EncoderInfo(self.info.encoder_id, dim, "cosine", self.info.threshold, self.info.model_sha256)
            self._rec = rec

    def detect(self, image: np.ndarray, *, upsample: int = 0) -> list[Face]:
        self._load()
        img = to_rgb_array(image)
        if self._det is None:
            return self._fallback.detect(img, upsample=upsample)
        h, w = img.shape[:2]
        bboxes, kpss = self._det.detect(np.ascontiguousarray(img[..., ::-1]), max_num=0)
        faces = []
        for i in np.argsort(-bboxes[:, 4], kind="stable"):
            x0, y0, x1, y1, score = (float(v) for v in bboxes[i])
            kps5 = np.asarray(kpss[i], dtype=np.float32)
            yaw, pitch, roll = pose_from_kps5(kps5)
            faces.append(
                Face(
                    index=len(faces),
                    box=(max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))),
                    score=score,
                    landmarks=kps5,
                    kps5=kps5,
                    yaw=yaw,
                    pitch=pitch,
                    roll=roll,
                    aligned=norm_crop(img, kps5),
                    extra={"raw_box": (x0, y0, x1, y1), "backend": "insightface"},
                )
            )
        return faces

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> list[Face]:
        self._load()
        img = to_rgb_array(image)
        crops = [f.aligned if f.aligned is not None else norm_crop(img, f.kps5) for f in faces]
        if crops:
            feats = self._rec.get_feat([np.ascontiguousarray(c[..., ::-1]) for c in crops])  # ArcFace wants BGR
            for f, v in zip(faces, feats):
                f.embedding = np.asarray(v, dtype=np.float32)
                f.encoder_id = self.info.encoder_id
        return list(faces)

    def analyze(self, image: np.ndarray, *, upsample: int = 0) -> list[Face]:
        img = to_rgb_array(image)
        return self.embed(img, self.detect(img, upsample=upsample))
