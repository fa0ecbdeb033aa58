"""Reference-photo quality checklist: what creators' guides tell users to check by hand, measured.

`check_reference` returns a `QualityReport` with pass/warn/fail per check and a fix in plain words.
Thresholds live in `configs/quality.yaml` (`QualityConfig`), documented there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine._core.errors import ConfigError

from .crops import head_box
from .types import Face

Status = Literal["pass", "warn", "fail", "skip"]
_RANK = {"skip": 0, "pass": 0, "warn": 1, "fail": 2}  # a check that cannot run ("skip") never passes as "pass"


class QualityConfig(BaseModel):
    """Thresholds of the checklist (see configs/quality.yaml for what each one means)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_min_side_pass: int = Field(1024, ge=1)
    image_min_side_warn: int = Field(512, ge=1)
    face_width_pass: float = Field(200, ge=1)
    face_width_warn: float = Field(80, ge=1)
    head_share_pass: float = Field(0.30, gt=0, le=1)
    head_share_warn: float = Field(0.12, gt=0, le=1)
    yaw_pass: float = Field(45, ge=0, le=90)
    yaw_warn: float = Field(60, ge=0, le=90)
    eye_ratio_pass: float = Field(0.18, ge=0)
    eye_ratio_warn: float = Field(0.12, ge=0)
    sharpness_pass: float = Field(60, ge=0)
    sharpness_warn: float = Field(20, ge=0)
    brightness_min: float = Field(60, ge=0, le=255)
    brightness_max: float = Field(200, ge=0, le=255)
    clipped_share_warn: float = Field(0.08, ge=0, le=1)
    lighting_imbalance_warn: float = Field(0.25, ge=0, le=1)
    edge_cut_tolerance_px: float = Field(2, ge=0)


def default_quality_config_path() -> Path:
    from engine._core.settings import repo_root

    return repo_root() / "configs" / "quality.yaml"


def load_quality_config(path: str | Path | None = None) -> QualityConfig:
    from engine._core.yaml_io import read_document

    path = Path(path) if path else default_quality_config_path()
    data = read_document(path, "quality config") or {}  # bounded like every YAML the engine reads
    try:
        return QualityConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"{path}: key '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None


class QualityCheck(BaseModel):
    name: str
    status: Status
    value: float | int | None = None
    threshold: str = ""
    message: str
    fix: str = ""


class QualityReport(BaseModel):
    status: Status
    checks: list[QualityCheck]

    def check(self, name: str) -> QualityCheck:
        return next(c for c in self.checks if c.name == name)


def _grade_high(value: float, pass_at: float, warn_at: float) -> Status:
    """Bigger is better."""
    return "pass" if value >= pass_at else "warn" if value >= warn_at else "fail"


def _grade_low(value: float, pass_at: float, warn_at: float) -> Status:
    """Smaller is better."""
    return "pass" if value <= pass_at else "warn" if value <= warn_at else "fail"


def _grey(img: np.ndarray) -> np.ndarray:
    return img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def check_reference(
    image: np.ndarray, faces: Sequence[Face], chosen: Face, config: QualityConfig | None = None
) -> QualityReport:
    """Grade one reference photo (the `chosen` face among `faces`) against the checklist."""
    import cv2

    cfg = config or load_quality_config()
    h, w = image.shape[:2]
    checks: list[QualityCheck] = []

    # 1. exactly one clear face
    n = len(faces)
    checks.append(
        QualityCheck(
            name="one_face",
            status="pass" if n == 1 else "warn",
            value=n,
            threshold="1",
            message="one face" if n == 1 else f"{n} faces in the photo; face #{chosen.index} is used",
            fix="" if n == 1 else "crop the photo to the one person so nothing else leaks into the reference",
        )
    )

    # 2. image resolution
    short = min(h, w)
    st = _grade_high(short, cfg.image_min_side_pass, cfg.image_min_side_warn)
    checks.append(
        QualityCheck(
            name="image_resolution",
            status=st,
            value=short,
            threshold=f">= {cfg.image_min_side_pass} px (warn >= {cfg.image_min_side_warn})",
            message=f"{w}x{h} pixels",
            fix="" if st == "pass" else "use a larger original (1024x1024 or more)",
        )
    )

    # 3. face size
    fw = chosen.width
    st = _grade_high(fw, cfg.face_width_pass, cfg.face_width_warn)
    checks.append(
        QualityCheck(
            name="face_size",
            status=st,
            value=round(fw, 1),
            threshold=f">= {cfg.face_width_pass:g} px (warn >= {cfg.face_width_warn:g})",
            message=f"face is {fw:.0f} px wide",
            fix="" if st == "pass" else "use a closer shot or a higher-resolution photo: the face is too small",
        )
    )

    # 4. head share of the frame
    _, hy0, _, hy1 = head_box(chosen)
    share = (hy1 - hy0) / h
    st = _grade_high(share, cfg.head_share_pass, cfg.head_share_warn)
    checks.append(
        QualityCheck(
            name="head_share",
            status=st,
            value=round(share, 3),
            threshold=f">= {cfg.head_share_pass:g} (warn >= {cfg.head_share_warn:g})",
            message=f"head is {share:.0%} of the frame height",
            fix=""
            if st == "pass"
            else "use a head-and-shoulders photo (head ~70% of a square crop), not a full figure",
        )
    )

    # 5. head turn
    yaw = abs(chosen.yaw)
    st = _grade_low(yaw, cfg.yaw_pass, cfg.yaw_warn)
    checks.append(
        QualityCheck(
            name="yaw",
            status=st,
            value=round(chosen.yaw, 1),
            threshold=f"|yaw| <= {cfg.yaw_pass:g} deg (warn <= {cfg.yaw_warn:g})",
            message=f"head turned {chosen.yaw:+.0f} degrees"
            + (f" ({chosen.extra['yaw_note']})" if chosen.extra.get("yaw_note") else ""),
            fix="" if st == "pass" else "use a frontal or 3/4 view; profiles hide half the face",
        )
    )

    # 6. eyes visible (needs 68-point landmarks)
    ear = chosen.extra.get("eye_aspect_ratio")
    unavailable = (chosen.extra.get("unavailable") or {}).get("eyes_visible")
    if ear is None and unavailable:
        checks.append(
            QualityCheck(
                name="eyes_visible",
                status="skip",
                threshold=f"eye ratio >= {cfg.eye_ratio_pass:g}",
                message=unavailable,
                fix="check by eye that both eyes are open and visible",
            )
        )
    if ear is not None:
        e = float(min(ear))
        st = _grade_high(e, cfg.eye_ratio_pass, cfg.eye_ratio_warn)
        checks.append(
            QualityCheck(
                name="eyes_visible",
                status=st,
                value=round(e, 3),
                threshold=f"eye ratio >= {cfg.eye_ratio_pass:g} (warn >= {cfg.eye_ratio_warn:g})",
                message="both eyes open" if st == "pass" else "an eye looks closed or covered",
                fix=""
                if st == "pass"
                else "use a photo with both eyes open and visible (no sunglasses, no hair over eyes)",
            )
        )

    # 7-9 measured on the aligned face
    aligned = chosen.aligned
    if aligned is not None:
        grey = _grey(aligned)
        sharp = float(cv2.Laplacian(grey, cv2.CV_32F).var())
        st = _grade_high(sharp, cfg.sharpness_pass, cfg.sharpness_warn)
        checks.append(
            QualityCheck(
                name="sharpness",
                status=st,
                value=round(sharp, 1),
                threshold=f"Laplacian variance >= {cfg.sharpness_pass:g} (warn >= {cfg.sharpness_warn:g})",
                message="sharp" if st == "pass" else "the face is blurred",
                fix="" if st == "pass" else "use an in-focus photo without motion blur or heavy compression",
            )
        )
        mean = float(grey.mean())
        clipped = float(((grey <= 5) | (grey >= 250)).mean())
        ok = cfg.brightness_min <= mean <= cfg.brightness_max and clipped <= cfg.clipped_share_warn
        checks.append(
            QualityCheck(
                name="exposure",
                status="pass" if ok else "warn",
                value=round(mean, 1),
                threshold=f"{cfg.brightness_min:g}-{cfg.brightness_max:g} grey, clipped <= {cfg.clipped_share_warn:.0%}",
                message=f"mean grey {mean:.0f}, {clipped:.0%} clipped",
                fix=""
                if ok
                else (
                    "the face is too dark: use a brighter photo"
                    if mean < cfg.brightness_min
                    else "the face is over-exposed: use a photo with detail in the skin"
                ),
            )
        )
        half = grey.shape[1] // 2
        left, right = float(grey[:, :half].mean()), float(grey[:, half:].mean())
        imb = abs(left - right) / max(left, right, 1e-6)
        st = "pass" if imb <= cfg.lighting_imbalance_warn else "warn"
        checks.append(
            QualityCheck(
                name="lighting_evenness",
                status=st,
                value=round(imb, 3),
                threshold=f"left/right imbalance <= {cfg.lighting_imbalance_warn:g}",
                message="even light" if st == "pass" else "one side of the face is much darker (harsh shadow)",
                fix="" if st == "pass" else "use a photo with soft, even light on both halves of the face",
            )
        )

    # 10. occlusion by the frame edge
    raw = chosen.extra.get("raw_box") or chosen.box
    tol = cfg.edge_cut_tolerance_px
    pts = np.asarray(chosen.landmarks, dtype=np.float32).reshape(-1, 2)
    outside = int(((pts[:, 0] < -tol) | (pts[:, 1] < -tol) | (pts[:, 0] > w + tol) | (pts[:, 1] > h + tol)).sum())
    box_cut = raw[0] < -tol or raw[1] < -tol or raw[2] > w + tol or raw[3] > h + tol
    cut = outside > 0 or box_cut
    checks.append(
        QualityCheck(
            name="face_cut_off",
            status="fail" if cut else "pass",
            value=outside,
            threshold="0 landmarks outside",
            message=(
                f"the face is cut by the image edge ({outside} landmark(s) outside)" if cut else "whole face in frame"
            ),
            fix="use a photo where the whole face, with some margin, is inside the frame" if cut else "",
        )
    )

    overall = max((c.status for c in checks if c.status != "skip"), key=_RANK.__getitem__, default="pass")
    return QualityReport(status=overall, checks=checks)
