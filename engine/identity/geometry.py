"""Landmark geometry shared by the backends: 68 -> 5 ArcFace points, head pose, eye openness.

Pure numpy/OpenCV on landmark arrays, so it is testable without any model.
"""

from __future__ import annotations

import numpy as np

# Generic 3-D head (millimetre-ish units; x to the subject's left as seen in the image = image right,
# y up, z out of the face towards the viewer) for the 68-point indices below. The classic
# six-point model used with solvePnP for head pose; symmetric in x, so mirrored images give mirrored poses.
_MODEL_3D = np.array(
    [
        (0.0, 0.0, 0.0),  # 30 nose tip
        (0.0, -330.0, -65.0),  # 8 chin
        (-225.0, 170.0, -135.0),  # 36 outer corner of the eye on the image left
        (225.0, 170.0, -135.0),  # 45 outer corner of the eye on the image right
        (-150.0, -150.0, -125.0),  # 48 mouth corner, image left
        (150.0, -150.0, -125.0),  # 54 mouth corner, image right
    ],
    dtype=np.float64,
)
_MODEL_IDX = [30, 8, 36, 45, 48, 54]


def kps5_from_68(pts: np.ndarray) -> np.ndarray:
    """ArcFace 5 points from dlib's 68: eye centres (image left first), nose tip, mouth corners."""
    pts = np.asarray(pts, dtype=np.float32)
    return np.stack([pts[36:42].mean(axis=0), pts[42:48].mean(axis=0), pts[30], pts[48], pts[54]]).astype(np.float32)


# ArcFace's 5 points from dlib's CC0 5-point model (eye corners 45, 42 | 36, 39 and the nose base 33, in 68-point
# numbering). In a frame centred between the eye-corner midpoints, with u along the eye line and v perpendicular
# (down), in units of the eye distance, each target point is a + b * nose_u + c * nose_v (the nose base's own
# coordinates, which carry the head turn). Fitted by least squares on the 18 faces of the test photos and their
# mirror images against the 68-point model's points; mean error 0.02 (eye centres), 0.04 (nose tip) and 0.12 (mouth
# corners) eye distances: enough for the aligned crop, which is a least-squares fit of all five points.
_KPS5_FROM_5 = np.array(
    [
        # u: a, b, c          v: a, b, c
        [[-0.381, -0.028, -0.144], [0.076, 0.042, -0.104]],  # left eye centre (image left)
        [[0.336, -0.014, 0.210], [0.061, -0.015, -0.083]],  # right eye centre
        [[0.015, 1.505, -0.024], [-0.153, -0.017, 0.908]],  # nose tip
        [[-0.385, 0.047, -0.133], [0.022, -0.050, 1.328]],  # left mouth corner
        [[0.375, 0.085, 0.140], [0.005, -0.007, 1.342]],  # right mouth corner
    ]
)


def kps5_from_dlib5(pts: np.ndarray) -> np.ndarray:
    """ArcFace 5 points (eye centres, nose tip, mouth corners) estimated from dlib's 5-point landmarks."""
    p = np.asarray(pts, dtype=np.float64)
    left, right = (p[2] + p[3]) / 2, (p[0] + p[1]) / 2
    mid, d = (left + right) / 2, max(float(np.linalg.norm(right - left)), 1e-6)
    u = (right - left) / d
    v = np.array([-u[1], u[0]])
    nu, nv = ((p[4] - mid) @ u) / d, ((p[4] - mid) @ v) / d
    coef = _KPS5_FROM_5 @ np.array([1.0, nu, nv])  # (5, 2): u, v coordinates per point
    return (mid + d * (coef[:, :1] * u + coef[:, 1:] * v)).astype(np.float32)


def pose_from_kps5(kps5: np.ndarray) -> tuple[float, float, float]:
    """Rough (yaw, pitch, roll) in degrees from the 5 ArcFace points (same sign convention as `head_pose_68`).

    Yaw from the nose's horizontal offset from the eye midpoint relative to half the eye distance
    (~0 frontal, ~1 at profile); pitch likewise vertically; roll from the eye line.
    """
    k = np.asarray(kps5, dtype=np.float64)
    le, re, nose, lm, rm = k
    eye_mid, mouth_mid = (le + re) / 2, (lm + rm) / 2
    half = max(np.linalg.norm(re - le) / 2, 1e-6)
    yaw = float(np.degrees(np.arcsin(np.clip((nose[0] - eye_mid[0]) / (half * 1.6), -1, 1))))
    span = max(np.linalg.norm(mouth_mid - eye_mid), 1e-6)
    pitch = float(np.degrees(np.arcsin(np.clip(((eye_mid[1] + mouth_mid[1]) / 2 - nose[1]) / span, -1, 1))))
    roll = float(np.degrees(np.arctan2(re[1] - le[1], re[0] - le[0])))
    return yaw, pitch, roll


def head_pose_68(pts: np.ndarray, image_size: tuple[int, int]) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from 68 landmarks, with a generic 3-D model and cv2.solvePnP.

    Sign convention (image coordinates, subject facing the camera):
    - yaw > 0: the nose points towards the image right (the subject turns to their own left);
    - pitch > 0: the face points up;
    - roll > 0: the eye line rotates clockwise in the image (the image-right eye is lower).
    A horizontally mirrored image gives about -yaw and -roll (same pitch).

    The principal point is put at the face centre, so the angles describe how the face looks in the
    frame (turn relative to the line of sight), not its rotation relative to the optical axis.
    """
    import cv2

    pts = np.asarray(pts, dtype=np.float64)
    img_pts = pts[_MODEL_IDX]
    h, w = image_size
    focal = float(max(h, w))
    centre = pts.mean(axis=0)
    cam = np.array([[focal, 0, centre[0]], [0, focal, centre[1]], [0, 0, 1]], dtype=np.float64)
    # Start from a frontal pose at the depth the eye span implies: without a guess the iterative solver
    # sometimes lands on the mirrored-pitch solution of this near-planar point set.
    eye_span = max(float(np.linalg.norm(img_pts[3] - img_pts[2])), 1.0)
    rvec0 = np.array([[np.pi], [0.0], [0.0]])  # model y up / z to viewer -> camera y down / z away
    tvec0 = np.array([[0.0], [0.0], [focal * 450.0 / eye_span]])
    ok, rvec, _tvec = cv2.solvePnP(
        _MODEL_3D, img_pts, cam, None, rvec0, tvec0, useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE
    )
    if not ok:
        return 0.0, 0.0, _roll(pts)
    rot, _ = cv2.Rodrigues(rvec)
    fwd = rot @ np.array([0.0, 0.0, 1.0])  # the face's forward direction in camera coords (x right, y down, z away)
    yaw = float(np.degrees(np.arctan2(fwd[0], -fwd[2])))
    pitch = float(np.degrees(np.arctan2(-fwd[1], np.hypot(fwd[0], fwd[2]))))
    return yaw, pitch, _roll(pts)


def _roll(pts: np.ndarray) -> float:
    left, right = pts[36:42].mean(axis=0), pts[42:48].mean(axis=0)
    return float(np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0])))


def norm_crop(image: np.ndarray, kps5: np.ndarray, image_size: int = 112) -> np.ndarray:
    """ArcFace-aligned square crop (insightface's `norm_crop`), without its scikit-image deprecation warning."""
    import warnings

    from insightface.utils.face_align import norm_crop as _norm_crop

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _norm_crop(image, np.asarray(kps5, dtype=np.float32), image_size=image_size)


def eye_aspect_ratios(pts: np.ndarray) -> tuple[float, float]:
    """Eye aspect ratio (Soukupova & Cech 2016) of both eyes from 68 points: ~0.25-0.35 open, < ~0.15 closed."""
    pts = np.asarray(pts, dtype=np.float64)

    def ear(e: np.ndarray) -> float:
        horiz = np.linalg.norm(e[0] - e[3])
        return float((np.linalg.norm(e[1] - e[5]) + np.linalg.norm(e[2] - e[4])) / max(2.0 * horiz, 1e-6))

    return ear(pts[36:42]), ear(pts[42:48])
