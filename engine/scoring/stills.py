"""Face consistency of a rendered still, region by region: is each character's face in its region, and whose is it?

With several characters in one image, a good average can hide a swap (the left character's face rendered on the
right). Each region's face is compared with its own character, and every measured face is also told apart against
all the characters in the shot, so the report says which character each face is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from engine.identity.layout import Region
from engine.identity.types import FaceAnalyzer, IdentityReference

from .schema import EncoderRecord, ScoreCurve
from .scorer import check_reference


class RegionScore(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    character_id: str
    name: str
    box: tuple[int, int, int, int]
    faces_in_region: int
    face_box: tuple[float, float, float, float] | None = None
    yaw: float | None = Field(None, description="Head turn of the measured face, degrees (+ = subject's left).")
    distance: float | None = None
    similarity: float | None = None
    score: float | None = Field(None, description="Per-face score in percent (the scorer's curve).")
    passes: bool | None = None
    identified_as: str | None = Field(
        None, description="Name of the character this face is (nearest under the threshold), None if nobody."
    )
    identified_index: int | None = Field(None, description="Region index of that character.")


class StillScore(BaseModel):
    """The consistency report of one still (recorded in the PNG's metadata)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    encoder: EncoderRecord
    regions: list[RegionScore]
    faces_found: int
    score: float | None = Field(None, description="Mean of the region scores (a region without its face scores 0).")
    swapped: bool = Field(False, description="A region's face is another character of the shot.")


def score_still(
    image: np.ndarray,
    references: Sequence[IdentityReference],
    analyzer: FaceAnalyzer,
    regions: Sequence[Region] | None = None,
    curve: ScoreCurve | None = None,
) -> StillScore:
    """Score `image` (RGB uint8) against one reference per region (`regions` None: one region, the whole image)."""
    from engine.identity.images import to_rgb_array

    img = to_rgb_array(image)
    h, w = img.shape[:2]
    if regions is None:
        regions = [Region(0, (0, 0, w, h), (0.0, 0.0, float(w), float(h)))]
    if len(regions) != len(references):
        raise ValueError("one reference per region")
    for ref in references:
        check_reference(ref, analyzer)
    curve = curve or ScoreCurve()
    info = analyzer.info
    faces = analyzer.analyze(img) or analyzer.analyze(img, upsample=1)
    dists = [[info.distance(ref.embedding, f.embedding) for ref in references] for f in faces]
    out = []
    for r, ref in zip(regions, references):
        inside = [i for i, f in enumerate(faces) if r.contains((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2)]
        if not inside:
            out.append(RegionScore(index=r.index, character_id=ref.character_id, name=ref.name, box=r.box,
                                   faces_in_region=0, score=0.0, passes=False))  # fmt: skip
            continue
        best = min(inside, key=lambda i: dists[i][r.index])
        d = dists[best][r.index]
        nearest = int(np.argmin(dists[best]))
        f = faces[best]
        out.append(
            RegionScore(
                index=r.index,
                character_id=ref.character_id,
                name=ref.name,
                box=r.box,
                faces_in_region=len(inside),
                face_box=tuple(float(v) for v in f.box),
                yaw=round(float(f.yaw), 2),
                distance=round(float(d), 6),
                similarity=round(float(info.similarity(ref.embedding, f.embedding)), 6),
                score=round(curve.score(d, info.threshold), 3),
                passes=bool(d < info.threshold),
                identified_as=references[nearest].name if dists[best][nearest] < info.threshold else None,
                identified_index=nearest if dists[best][nearest] < info.threshold else None,
            )
        )
    scores = [x.score for x in out]
    return StillScore(
        encoder=EncoderRecord(
            encoder_id=info.encoder_id,
            dim=info.dim,
            metric=info.metric,
            threshold=info.threshold,
            model_sha256=info.model_sha256,
        ),
        regions=out,
        faces_found=len(faces),
        score=round(float(np.mean(scores)), 3) if scores else None,
        swapped=any(x.identified_index is not None and x.identified_index != x.index for x in out),
    )


__all__ = ["RegionScore", "StillScore", "score_still"]
