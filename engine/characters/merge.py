"""Merging several reference embeddings into one identity vector, and spotting a reference of someone else.

Merge (`weighted-mean-unit-rescaled`): average the *directions* (each vector L2-normalised, so a photo whose
vector happens to be longer does not dominate), weighted by the user's weights. Averaging unit vectors gives a
vector shorter than 1, so:

- cosine encoders (ArcFace): re-normalise to unit length (the norm carries no meaning for cosine);
- euclidean encoders (dlib): rescale to the weighted mean norm of the references. dlib's 0.6 threshold was
  calibrated on raw descriptors (norms ~1.35-1.6 on the test photos, not 1), so the centroid must live in that
  same space; a unit-length centroid would sit ~0.4 away from every real face and break the threshold.

Outliers (leave-one-out): reference i is compared with the merge of all the *other* references. Including i in
the centroid would pull it towards i and hide the outlier (with two photos, the distance is halved). A reference
whose leave-one-out distance is above the encoder's same-person threshold is a different person (or a bad
detection) and is refused unless forced.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.identity.types import EncoderInfo

MERGE_METHOD = "weighted-mean-unit-rescaled"


def merge_embeddings(vectors: Sequence[np.ndarray], weights: Sequence[float], info: EncoderInfo) -> np.ndarray:
    """The weighted identity centroid (float32, `info.dim`) of one or more embeddings."""
    v = np.stack([np.asarray(x, dtype=np.float64).ravel() for x in vectors])
    w = np.asarray(weights, dtype=np.float64)
    if v.shape[0] == 0 or w.shape != (v.shape[0],) or np.any(w <= 0):
        raise ValueError("merge needs one positive weight per embedding")
    norms = np.linalg.norm(v, axis=1)
    units = v / np.maximum(norms, 1e-12)[:, None]
    mean = (w[:, None] * units).sum(0) / w.sum()
    direction = mean / max(float(np.linalg.norm(mean)), 1e-12)
    scale = 1.0 if info.metric == "cosine" else float((w * norms).sum() / w.sum())
    return (direction * scale).astype(np.float32)


def leave_one_out_distances(
    vectors: Sequence[np.ndarray], weights: Sequence[float], info: EncoderInfo
) -> list[float | None]:
    """For each embedding, its distance to the merge of the others (None when there is only one)."""
    n = len(vectors)
    if n < 2:
        return [None] * n
    out: list[float | None] = []
    for i in range(n):
        others = [vectors[j] for j in range(n) if j != i]
        ow = [weights[j] for j in range(n) if j != i]
        out.append(info.distance(vectors[i], merge_embeddings(others, ow, info)))
    return out
