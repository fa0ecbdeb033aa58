"""The face-keypoint image InstantID's IdentityNet is conditioned on, drawn by our own code, and where faces go.

IdentityNet was trained on images drawn like this (InstantID's `draw_kps`): on a black canvas the size of the output,
four "limbs" from each of the 5 ArcFace points (left eye, right eye, mouth corners) to the nose tip, each an ellipse
of width 4 in the colour of its outer point, the limbs dimmed to 60 %, then every point as a filled circle of
radius 10 in red, green, blue, yellow and magenta. Several faces go on one canvas, each at its place.

Points come from a reference photo (its stored `kps5`, normalised to the face box and placed into the face box of
the shot) or from a pose template at a chosen head turn (`pose_template(yaw)`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# RGB, in ArcFace point order: left eye, right eye, nose tip, left mouth corner, right mouth corner
KPS_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
_LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))
STICK_WIDTH = 4
POINT_RADIUS = 10
LIMB_DIM = 0.6

# ArcFace's 112x112 reference points (insightface `arcface_dst`), the frontal layout.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
# Depth of each point in the same units (eyes and mouth corners behind the nose tip), for turning the template.
_DEPTH_112 = np.array([-18.0, -18.0, 8.0, -14.0, -14.0])
_FACE_CENTRE_112 = np.array([56.0, 70.0])


def draw_kps(size: tuple[int, int], faces: Sequence[np.ndarray]) -> np.ndarray:
    """(H, W, 3) uint8 keypoint image for `faces` (each a (5, 2) array of pixel points) on a black canvas."""
    import cv2

    w, h = int(size[0]), int(size[1])
    canvas = np.zeros((h, w, 3), dtype=np.uint8)
    for kps in faces:
        pts = np.asarray(kps, dtype=np.float64).reshape(5, 2)
        limbs = np.zeros_like(canvas)
        for a, b in _LIMBS:
            (xa, ya), (xb, yb) = pts[a], pts[b]
            length = math.hypot(xa - xb, ya - yb)
            angle = math.degrees(math.atan2(ya - yb, xa - xb))
            poly = cv2.ellipse2Poly(
                (round((xa + xb) / 2), round((ya + yb) / 2)), (round(length / 2), STICK_WIDTH), round(angle), 0, 360, 1
            )
            cv2.fillConvexPoly(limbs, poly, KPS_COLOURS[a])
        canvas = np.maximum(canvas, (limbs * LIMB_DIM).astype(np.uint8))
    for kps in faces:
        for (x, y), colour in zip(np.asarray(kps, dtype=np.float64).reshape(5, 2), KPS_COLOURS):
            cv2.circle(canvas, (round(x), round(y)), POINT_RADIUS, colour, -1)
    return canvas


def pose_template(yaw: float = 0.0) -> np.ndarray:
    """The 5 points of a face turned by `yaw` degrees (+ = the subject turns to their left, image right), in the
    unit box [0, 1]^2 of the face (ArcFace's frontal layout, turned about the vertical axis and projected)."""
    if not -90.0 <= float(yaw) <= 90.0:
        raise ValueError(f"yaw must be between -90 and 90 degrees (got {yaw})")
    t = math.radians(float(yaw))
    x = ARCFACE_112[:, 0] - _FACE_CENTRE_112[0]
    z = _DEPTH_112
    xr = x * math.cos(t) + z * math.sin(t)
    pts = np.stack([xr + _FACE_CENTRE_112[0], ARCFACE_112[:, 1]], axis=1)
    return pts / 112.0


def unit_from_kps(kps: np.ndarray) -> np.ndarray:
    """A reference's 5 points in the unit frame of its ArcFace-aligned crop: the similarity transform that aligns
    them (as `norm_crop` does) is applied and the result divided by 112. Position, size and roll of the face in
    its photo drop out; the shape (head turn, expression) stays, so it can be placed in any face box."""
    import cv2

    src = np.asarray(kps, dtype=np.float64).reshape(5, 2)
    m, _ = cv2.estimateAffinePartial2D(src, ARCFACE_112, method=cv2.LMEDS)
    if m is None:
        raise ValueError("the 5 face points are degenerate (all on a line)")
    return (src @ m[:, :2].T + m[:, 2]) / 112.0


def place_in_box(unit_kps: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """Unit-box points -> pixel points inside `box` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.asarray(unit_kps, dtype=np.float64).reshape(5, 2) * [x1 - x0, y1 - y0] + [x0, y0]


__all__ = ["ARCFACE_112", "KPS_COLOURS", "draw_kps", "place_in_box", "pose_template", "unit_from_kps"]
