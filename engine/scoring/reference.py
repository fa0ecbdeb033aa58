"""An `IdentityReference` straight from photos, for scoring without a saved character (`--reference-photo`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from engine._core.errors import InputError
from engine.identity.types import FaceAnalyzer, IdentityReference


def reference_from_photos(
    paths: Sequence[str | os.PathLike], analyzer: FaceAnalyzer, *, name: str | None = None, force: bool = False
) -> IdentityReference:
    """The photos made into a character in memory, then its merged embedding.

    It is the same path as `flx character create`: the same face choice (one face, or refuse an ambiguous photo),
    the same size floor, and the same leave-one-out outlier check, so photos of two different people are refused
    (unless `force`) instead of being averaged into nobody. The id is `photos:<sha256 of the photos' hashes>`
    (version 0), so a report names exactly which photos it was scored against.

    Raises:
        `FaceNotFound` / `AmbiguousFace`: a photo without one clear face.
        `InputError`: photos of different people (the message names the outlier), unreadable photos.
    """
    from engine.characters import create_character, identity_reference

    if not paths:
        raise InputError("no reference photos given: pass --reference-photo PATH (repeatable) or --character NAME")
    ordered = sorted(Path(x) for x in paths)
    label = name or "+".join(p.stem for p in ordered)[:100]
    character = create_character("reference photos", ordered, None, analyzer, force=force)
    h = hashlib.sha256()
    for ref in character.references:
        h.update(f"{ref.source_sha256}\n".encode())
    ref = identity_reference(character, analyzer.info)
    return IdentityReference(
        character_id=f"photos:{h.hexdigest()[:16]}",
        version=0,
        name=label,
        encoder_id=ref.encoder_id,
        embedding=ref.embedding,
        model_sha256=ref.model_sha256,
    )


def analyzer_for(encoder_id: str | None = None, settings=None) -> FaceAnalyzer:
    """The analyzer for `encoder_id` (default dlib); manifest encoders load their pack from the store in `settings`."""
    from engine.identity.registry import get_analyzer

    return get_analyzer(encoder_id, settings=settings)
