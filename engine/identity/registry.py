"""Which identity encoders exist and how to get an analyzer for one. Explicit, no folder scanning.

- `dlib-resnet-v1` (default): dlib HOG + landmarks + ResNet 128-d, shipped in PyPI packages (built in).
- ArcFace encoders come from the weights manifest: every component with an `encoder` block declares its own
  encoder id (`arcface-antelopev2-glintr100` for the real antelopev2 pack, `tiny-arcface-antelopev2-glintr100` for
  its random-weight twin, ...). An encoder id names exactly one component, so a missing pack is one clear error and
  never a quiet substitute: the twin has its own id, and embeddings made with it can never pass for real ones.

Every analyzer knows the sha256 of the recognition model file that makes its vectors (`info.model_sha256`); a
character's stored embedding records it too, and `characters.identity_reference` refuses to mix the two.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine._core.errors import InputError

from .types import FaceAnalyzer

DEFAULT_ENCODER = "dlib-resnet-v1"


@dataclass(frozen=True)
class EncoderSpec:
    """How to build an analyzer for one encoder id.

    Built-in encoders have a `build(**kw)`; manifest encoders name their weights `component_id` and the files in it.
    """

    encoder_id: str
    component_id: str | None = None
    recognition_file: str | None = None
    detector_file: str | None = None
    build: Callable[..., FaceAnalyzer] | None = None
    description: str = ""

    @property
    def needs_pack(self) -> bool:
        return self.component_id is not None


def _dlib(*, commercial_use: bool = False, **_kw) -> FaceAnalyzer:
    from .dlib_backend import DlibFaceAnalyzer

    return DlibFaceAnalyzer(landmarks="5" if commercial_use else "68")


BUILTIN: dict[str, EncoderSpec] = {
    DEFAULT_ENCODER: EncoderSpec(DEFAULT_ENCODER, build=_dlib, description="dlib ResNet 128-d (embedded default)")
}


def manifest_encoders(manifest) -> dict[str, EncoderSpec]:
    """Encoder specs declared by manifest components (in manifest order)."""
    out: dict[str, EncoderSpec] = {}
    for c in manifest.components:
        enc = getattr(c, "encoder", None)
        if enc is None:
            continue
        if enc.id in out or enc.id in BUILTIN:
            raise InputError(f"weights manifest declares encoder '{enc.id}' twice: give each component its own id")
        out[enc.id] = EncoderSpec(
            enc.id, c.id, enc.recognition_file, enc.detector_file, description=enc.description or c.description
        )
    return out


def available_encoders(manifest=None) -> list[str]:
    """Built-in encoder ids first, then the manifest's."""
    return [*BUILTIN, *(manifest_encoders(manifest) if manifest is not None else {})]


def encoder_spec(encoder_id: str | None, manifest=None) -> EncoderSpec:
    encoder_id = encoder_id or DEFAULT_ENCODER
    if encoder_id in BUILTIN:
        return BUILTIN[encoder_id]
    specs = manifest_encoders(manifest) if manifest is not None else {}
    if encoder_id in specs:
        return specs[encoder_id]
    raise InputError(f"unknown encoder '{encoder_id}': choose one of {', '.join(available_encoders(manifest))}")


def encoder_for_component(manifest, component_id: str) -> str:
    """The encoder id a face-analysis component declares (presets name components, characters store encoder ids)."""
    entry = manifest.get(component_id)
    if getattr(entry, "encoder", None) is None:
        raise InputError(f"weights component '{component_id}' is not a face-analysis pack (it declares no encoder)")
    return entry.encoder.id


_FILE_HASHES: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    """sha256 of a model file, cached per process by (path, size, mtime): model files are read once per run."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key not in _FILE_HASHES:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(8 << 20):
                    h.update(chunk)
            _FILE_HASHES[key] = h.hexdigest()
        return _FILE_HASHES[key]


def get_analyzer(encoder_id: str | None = None, *, settings=None, **kw) -> FaceAnalyzer:
    """A new analyzer for `encoder_id` (default dlib).

    Manifest encoders load their pack from the weights store in `settings` (verified like every other load, and
    refused under commercial use when the pack's licence excludes it); the model hash comes from the lock.
    `settings.commercial_use` also puts the dlib backend on its CC0 models only.

    Raises:
        `InputError`: unknown encoder id, or a manifest encoder without `settings`.
        `ModelNotFound` / `WeightsIntegrityError` / `LicenseRefused`: the pack is absent, damaged or not allowed.
    """
    commercial = bool(getattr(settings, "commercial_use", False))
    manifest = None
    store = None
    if settings is not None and (encoder_id or DEFAULT_ENCODER) not in BUILTIN:
        from engine.models.store import WeightsStore

        store = WeightsStore(settings)
        manifest = store.manifest
    spec = encoder_spec(encoder_id, manifest)
    if not spec.needs_pack:
        return spec.build(commercial_use=commercial, **kw)
    if store is None:
        raise InputError(f"encoder '{spec.encoder_id}' loads its pack from the weights store: pass the settings")
    pack_dir = store.require(spec.component_id)
    # the hashes of the bytes actually loaded (they differ from the lock only under --allow-unverified)
    hashes = store.unverified_hashes(spec.component_id) or store.component_hashes(spec.component_id)
    from .insightface_backend import InsightFaceAnalyzer

    return InsightFaceAnalyzer(
        pack_dir,
        encoder_id=spec.encoder_id,
        recognition_file=spec.recognition_file,
        detector_file=spec.detector_file,
        model_sha256=hashes.get(spec.recognition_file),
        commercial_use=commercial,
        **kw,
    )


class AnalyzerCache:
    """Analyzers are expensive to load (models): keep one per encoder id and settings (thread-safe)."""

    def __init__(self, settings=None) -> None:
        self.settings = settings
        self._items: dict[str, FaceAnalyzer] = {}
        self._lock = threading.Lock()

    def get(self, encoder_id: str | None = None) -> FaceAnalyzer:
        encoder_id = encoder_id or DEFAULT_ENCODER
        with self._lock:
            if encoder_id not in self._items:
                self._items[encoder_id] = get_analyzer(encoder_id, settings=self.settings)
            return self._items[encoder_id]


__all__ = [
    "BUILTIN",
    "DEFAULT_ENCODER",
    "AnalyzerCache",
    "EncoderSpec",
    "available_encoders",
    "encoder_for_component",
    "encoder_spec",
    "file_sha256",
    "get_analyzer",
    "manifest_encoders",
]
