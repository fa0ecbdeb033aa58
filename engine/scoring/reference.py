"""An `IdentityReference` straight from photos, for scoring without a saved character (`--reference-photo`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from engine._core.errors import FaceNotFound, InputError
from engine.identity.types import FaceAnalyzer, IdentityReference


def reference_from_photos(
    paths: Sequence[str | os.PathLike], analyzer: FaceAnalyzer, *, name: str | None = None
) -> IdentityReference:
    """Embed the largest face of each photo and average the embeddings (cosine encoders: of unit vectors).

    The id is `photos:<sha256 of the photos' hashes>` (version 0), so a report names exactly which
    photos it was scored against.

    Raises:
        `FaceNotFound`: a photo without a detectable face.
    """
    from engine.characters.merge import merge_embeddings
    from engine.identity.images import load_image
    from engine.models.hashing import sha256_file

    if not paths:
        raise InputError("no reference photos given: pass --reference-photo PATH (repeatable) or --character NAME")
    info = analyzer.info
    vecs, h = [], hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        img = load_image(p)
        faces = analyzer.detect(img) or analyzer.detect(img, upsample=1)
        if not faces:
            raise FaceNotFound(
                f"no face found in reference photo {p}: use a photo where the face is clear and frontal"
            )
        face = max(faces, key=lambda f: f.area)
        analyzer.embed(img, [face])
        vecs.append(face.embedding)
        h.update(f"{sha256_file(p)}\n".encode())
    # the same merge as a character made from these photos, so both references score alike
    emb = merge_embeddings(vecs, [1.0] * len(vecs), info)
    return IdentityReference(
        character_id=f"photos:{h.hexdigest()[:16]}",
        version=0,
        name=name or "+".join(Path(p).stem for p in paths),
        encoder_id=info.encoder_id,
        embedding=emb,
    )


def analyzer_for(encoder_id: str | None = None, settings=None) -> FaceAnalyzer:
    """The analyzer for `encoder_id` (default dlib); ArcFace packs are resolved from the weights store in `settings`."""
    from engine.identity.registry import get_analyzer

    return get_analyzer(encoder_id, settings=settings)
