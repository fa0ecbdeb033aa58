"""Which face-analysis backends exist and how to get one. Explicit registration, no folder scanning.

Encoder ids:
- `dlib-resnet-v1` (default): dlib HOG + 68 landmarks + ResNet 128-d, shipped in PyPI packages.
- ArcFace ids (`arcface-antelopev2-glintr100`, `arcface-buffalo_l-w600k_r50`, ...): insightface ONNX
  packs, loaded from a weights-store folder (`pack_dir`) that the caller resolves and verifies.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine._core.errors import InputError

from .types import FaceAnalyzer

DEFAULT_ENCODER = "dlib-resnet-v1"


@dataclass(frozen=True)
class EncoderSpec:
    """How to build an analyzer for one encoder id."""

    encoder_id: str
    needs_pack: bool
    build: Callable[..., FaceAnalyzer]
    recognition_file: str | None = None
    detector_file: str | None = None
    manifest_role: str | None = None  # weights manifest role of the pack
    description: str = ""


def _dlib(**_kw) -> FaceAnalyzer:
    from .dlib_backend import DlibFaceAnalyzer

    return DlibFaceAnalyzer()


def _arcface(encoder_id: str, recognition: str, detector: str | None):
    def build(pack_dir: Path, **kw) -> FaceAnalyzer:
        from .insightface_backend import InsightFaceAnalyzer

        return InsightFaceAnalyzer(
            pack_dir, encoder_id=encoder_id, recognition_file=recognition, detector_file=detector, **kw
        )

    return build


ENCODERS: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec) -> None:
    if spec.encoder_id in ENCODERS:
        raise ValueError(f"encoder '{spec.encoder_id}' is already registered")
    ENCODERS[spec.encoder_id] = spec


register_encoder(EncoderSpec(DEFAULT_ENCODER, False, _dlib, description="dlib ResNet 128-d (embedded default)"))
register_encoder(
    EncoderSpec(
        "arcface-antelopev2-glintr100",
        True,
        _arcface("arcface-antelopev2-glintr100", "glintr100.onnx", "scrfd_10g_bnkps.onnx"),
        "glintr100.onnx",
        "scrfd_10g_bnkps.onnx",
        "face-analysis-antelopev2",
        "insightface antelopev2 ArcFace 512-d",
    )
)
register_encoder(
    EncoderSpec(
        "arcface-buffalo_l-w600k_r50",
        True,
        _arcface("arcface-buffalo_l-w600k_r50", "w600k_r50.onnx", "det_10g.onnx"),
        "w600k_r50.onnx",
        "det_10g.onnx",
        "face-analysis-buffalo_l",
        "insightface buffalo_l ArcFace 512-d",
    )
)


def available_encoders() -> list[str]:
    return list(ENCODERS)


def encoder_spec(encoder_id: str) -> EncoderSpec:
    try:
        return ENCODERS[encoder_id]
    except KeyError:
        raise InputError(f"unknown encoder '{encoder_id}': choose one of {', '.join(ENCODERS)}") from None


class AnalyzerCache:
    """Analyzers are expensive to load (models): keep one per (encoder id, pack folder)."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], FaceAnalyzer] = {}
        self._lock = threading.Lock()

    def get(self, encoder_id: str | None = None, *, pack_dir: Path | None = None, **kw) -> FaceAnalyzer:
        encoder_id = encoder_id or DEFAULT_ENCODER
        key = (encoder_id, str(pack_dir or ""))
        with self._lock:
            if key not in self._items:
                self._items[key] = get_analyzer(encoder_id, pack_dir=pack_dir, **kw)
            return self._items[key]


def get_analyzer(encoder_id: str | None = None, *, pack_dir: Path | None = None, settings=None, **kw) -> FaceAnalyzer:
    """A new analyzer for `encoder_id` (default dlib).

    ArcFace encoders need their pack folder: pass `pack_dir`, or `settings` to resolve the first
    verified manifest component with the encoder's role from the weights store.
    """
    spec = encoder_spec(encoder_id or DEFAULT_ENCODER)
    if not spec.needs_pack:
        return spec.build(**kw)
    if pack_dir is None and settings is not None:
        pack_dir = pack_dir_from_store(spec, settings)
    if pack_dir is None:
        raise InputError(
            f"encoder '{spec.encoder_id}' needs its insightface pack: `flx weights fetch` the "
            f"{spec.manifest_role} component (or pass --pack-dir)"
        )
    return spec.build(Path(pack_dir), **kw)


def pack_dir_from_store(spec: EncoderSpec, settings) -> Path:
    """The verified folder of the manifest component playing the encoder's role (real pack first)."""
    from engine._core.errors import ModelNotFound
    from engine.models.store import WeightsStore

    store = WeightsStore(settings)
    candidates = [c for c in store.manifest.components if c.role.value == spec.manifest_role]
    candidates.sort(key=lambda c: c.is_generated)  # real packs before tiny twins
    for c in candidates:
        try:
            return store.require(c.id)  # honours --allow-unverified like every other load
        except ModelNotFound:
            continue
    ids = ", ".join(c.id for c in candidates)
    raise ModelNotFound(
        f"no verified weights for encoder '{spec.encoder_id}': fetch one of {ids} "
        f"(`flx weights fetch {candidates[0].id if candidates else ''}`)"
    )
