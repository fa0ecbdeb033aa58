"""Types shared by every face-analysis backend (dlib, insightface) and their users.

This is the contract that characters/ and scoring/ build on: keep it stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class EncoderInfo:
    """What an identity encoder produces and how its vectors compare.

    `threshold` is the calibrated same-person cut on `distance()`: below it, same person.
    """

    encoder_id: str  # e.g. "dlib-resnet-v1", "arcface-antelopev2-glintr100"
    dim: int
    metric: Literal["euclidean", "cosine"]
    threshold: float
    model_sha256: str | None = None  # sha256 of the recognition model file that makes the vectors

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Distance between two embeddings in this encoder's metric (lower = more alike)."""
        a = np.asarray(a, dtype=np.float64).ravel()
        b = np.asarray(b, dtype=np.float64).ravel()
        if self.metric == "euclidean":
            return float(np.linalg.norm(a - b))
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return float(1.0 - (a @ b) / max(na * nb, 1e-12))

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """Cosine similarity of the two vectors (what published protocols report)."""
        a = np.asarray(a, dtype=np.float64).ravel()
        b = np.asarray(b, dtype=np.float64).ravel()
        return float((a @ b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


@dataclass
class Face:
    """One detected face, in the coordinates of the image it came from."""

    index: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1, clamped to the image
    score: float  # detector confidence
    landmarks: np.ndarray  # (K, 2) backend-native points (dlib: 68 or 5; insightface: 5)
    kps5: np.ndarray  # (5, 2) ArcFace order: left eye centre, right eye centre, nose tip, left/right mouth corner
    yaw: float = 0.0  # degrees, + = subject turns to their left (image right)
    pitch: float = 0.0
    roll: float = 0.0
    aligned: np.ndarray | None = None  # (112, 112, 3) uint8 RGB crop from insightface.utils.face_align.norm_crop
    embedding: np.ndarray | None = None  # (dim,) float32
    encoder_id: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def inter_ocular(self) -> float:
        """Distance in pixels between the eye centres (kps5[0], kps5[1])."""
        return float(np.linalg.norm(self.kps5[0] - self.kps5[1]))


@runtime_checkable
class FaceAnalyzer(Protocol):
    """A face-analysis backend. Images are RGB uint8 arrays (H, W, 3)."""

    info: EncoderInfo

    def detect(self, image: np.ndarray, *, upsample: int = 0) -> list[Face]:
        """All faces above the backend's score cut, with landmarks, kps5, pose and aligned crop; no embedding."""
        ...

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> list[Face]:
        """Fill `embedding` for the given faces (computed from `image`)."""
        ...

    def analyze(self, image: np.ndarray, *, upsample: int = 0) -> list[Face]:
        """detect + embed."""
        ...


@dataclass(frozen=True)
class IdentityReference:
    """The identity that outputs are compared against: a character's merged embedding for one encoder.

    Built by characters/ from a library entry or a `.flx` file; consumed by scoring/ and the pipelines.
    """

    character_id: str
    version: int
    name: str
    encoder_id: str
    embedding: np.ndarray  # (dim,) float32, the weighted merge of the references
    model_sha256: str | None = None  # recognition model file that made `embedding`
