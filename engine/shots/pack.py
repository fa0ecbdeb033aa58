"""The character pack: the canonical "anchor stills" (front neutral, front smile, 3/4 left and right, profile,
upper-body selfie, seated, standing), N candidates each, every candidate scored and its head turn checked, the best
of each shot stored with the character as a new version, plus a contact sheet with the scores.

Shots live in `configs/pack.yaml` (versioned). Selection (`select_best`): candidates whose measured yaw is within
the shot's tolerance of its target come first; among them the highest consistency score wins; a candidate with no
face found scores 0. Pack images later become the default references for video and LoRA training.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine._core.errors import ConfigError, InputError

if TYPE_CHECKING:
    from engine.api import Engine

MAX_PACK_CANDIDATES = 16
_ID = r"^[a-z0-9][a-z0-9-]{0,40}$"


DEFAULT_PACK_PRESET = "stills-instantid-sdxl"


class PackShot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: str = Field(pattern=_ID)
    label: str = Field(max_length=80)
    scene: str = Field(min_length=1, max_length=500)
    yaw: float | None = Field(None, ge=-90.0, le=90.0, description="Target head turn; None = any.")
    tolerance: float = Field(20.0, gt=0.0, le=90.0, description="Allowed |measured - target| yaw, degrees.")


class PackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1)
    name: str = Field(pattern=_ID)
    shots: list[PackShot] = Field(min_length=1, max_length=32)


def load_pack_config(path: str | Path | None = None) -> PackConfig:
    from engine._core.settings import repo_root
    from engine._core.yaml_io import read_document

    p = Path(path) if path else repo_root() / "configs" / "pack.yaml"
    try:
        cfg = PackConfig.model_validate(read_document(p, "pack config"))
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"{p}: key '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None
    if len({s.id for s in cfg.shots}) != len(cfg.shots):
        raise ConfigError(f"{p}: shot ids must be unique")
    return cfg


@dataclass(frozen=True)
class Judged:
    """One candidate as the selection sees it."""

    score: float | None  # consistency score in percent (None: not scored)
    yaw: float | None  # measured yaw of the character's face (None: no face found)

    def on_pose(self, target: float | None, tolerance: float) -> bool:
        if target is None:
            return True
        return self.yaw is not None and abs(self.yaw - target) <= tolerance


def select_best(candidates: Sequence[Judged], target: float | None, tolerance: float) -> int:
    """Index of the candidate to keep: on-pose first, then the highest score (no face = 0), then the earliest."""
    if not candidates:
        raise ValueError("no candidates")
    return max(
        range(len(candidates)),
        key=lambda i: (candidates[i].on_pose(target, tolerance), candidates[i].score or 0.0, -i),
    )


@dataclass
class PackResult:
    character: object  # the new Character version, pack attached
    sheet: Path
    shots: list[dict]


def _judge(candidate) -> Judged:
    score = candidate.score
    if score is None or not score.regions:
        return Judged(None, None)
    region = score.regions[0]
    return Judged(score.score, region.yaw if region.faces_in_region else None)


def make_pack(
    engine: Engine,
    name: str,
    *,
    candidates: int = 4,
    preset: str | None = None,
    seed: int = 0,
    out_dir: str | Path,
    config: PackConfig | None = None,
    shots: Sequence[str] | None = None,
) -> PackResult:
    """Render, score and select the pack of character `name`, store it as a new version, write a contact sheet."""
    from engine._core.atomic import ensure_writable_dir
    from engine.characters.schema import PackImage
    from engine.presets import IDENTITY_PIPELINES

    if isinstance(candidates, bool) or not isinstance(candidates, int) or not 1 <= candidates <= MAX_PACK_CANDIDATES:
        raise InputError(f"--candidates must be a whole number from 1 to {MAX_PACK_CANDIDATES} (got {candidates!r})")
    cfg = config or load_pack_config()
    chosen = list(cfg.shots)
    if shots:
        known = {s.id: s for s in cfg.shots}
        unknown = [s for s in shots if s not in known]
        if unknown:
            raise InputError(f"unknown pack shot(s) {', '.join(unknown)}: choose from {', '.join(known)}")
        chosen = [known[s] for s in shots]
    preset_name = preset or DEFAULT_PACK_PRESET
    p = engine.preset(preset_name)
    if p.pipeline not in IDENTITY_PIPELINES:
        raise InputError(f"preset '{preset_name}' has no identity conditioning: a pack needs an identity preset")
    character = engine.character(name)
    out = ensure_writable_dir(out_dir)
    images, records = [], []
    for k, shot in enumerate(chosen):
        outcome = engine.still(
            preset_name,
            shot.scene,
            out=out / f"{shot.id}.png",
            seed=seed + 1000 * k,
            characters=[name],
            candidates=candidates,
            yaw=shot.yaw if p.pipeline == "sdxl-instantid" else None,
        )
        judged = [_judge(c) for c in outcome.candidates]
        best = select_best(judged, shot.yaw, shot.tolerance)
        c = outcome.candidates[best]
        png = c.path.read_bytes()
        img = PackImage(
            shot=shot.id,
            label=shot.label,
            preset=preset_name,
            seed=c.seed,
            score=judged[best].score,
            yaw=judged[best].yaw,
            target_yaw=shot.yaw,
            on_pose=judged[best].on_pose(shot.yaw, shot.tolerance),
            candidates=len(outcome.candidates),
            image_sha256=hashlib.sha256(png).hexdigest(),
            image_png=png,
        )
        images.append(img)
        records.append(
            {
                "shot": shot.id,
                "best": str(c.path),
                "candidates": [
                    {"path": str(x.path), "seed": x.seed, "score": j.score, "yaw": j.yaw}
                    for x, j in zip(outcome.candidates, judged)
                ],
            }
        )
    new = character.next_version(f"pack: {len(images)} shot(s), {candidates} candidate(s) each ({preset_name})")
    new.pack = images
    with engine.library() as lib:
        if lib.get(character.id).version != character.version:
            raise InputError(f"character '{name}' changed while its pack rendered: run `flx pack {name}` again")
        lib.add(new)
    sheet = write_pack_sheet(new, out / "pack.png")
    return PackResult(new, sheet, records)


def write_pack_sheet(character, path: str | Path, *, thumb: int = 256) -> Path:
    """A contact sheet of the pack: one tile per shot with its label, score and measured/target yaw."""
    from PIL import Image, ImageDraw, ImageOps

    from engine._core.atomic import atomic_path

    tiles = []
    for img in character.pack:
        if img.image_png is None:
            continue
        with Image.open(io.BytesIO(img.image_png)) as im:
            t = ImageOps.contain(im.convert("RGB"), (thumb, thumb), method=Image.Resampling.LANCZOS)
        tile = Image.new("RGB", (thumb, thumb + 40), (24, 24, 24))
        tile.paste(t, ((thumb - t.width) // 2, 0))
        d = ImageDraw.Draw(tile)
        score = "no face" if img.score is None or img.yaw is None else f"{img.score:.0f}%"
        yaw = (
            ""
            if img.yaw is None
            else f" yaw {img.yaw:+.0f}" + ("" if img.target_yaw is None else f"/{img.target_yaw:+.0f}")
        )
        d.text((6, thumb + 4), img.label, fill=(230, 230, 230))
        d.text((6, thumb + 20), score + yaw + ("" if img.on_pose else " OFF-POSE"), fill=(255, 200, 80))
        tiles.append(tile)
    if not tiles:
        raise InputError(f"character '{character.name}' has no pack images: run `flx pack {character.name}`")
    cols = min(4, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + 40)), (0, 0, 0))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % cols) * thumb, (i // cols) * (thumb + 40)))
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


__all__ = ["Judged", "PackConfig", "PackResult", "load_pack_config", "make_pack", "select_best", "write_pack_sheet"]
