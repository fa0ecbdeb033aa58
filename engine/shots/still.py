"""A still shot: a scene, 0-4 characters and the render settings, turned into scored PNG candidates.

`StillShot` is the one schema of a still request (the CLI, job files and the server all validate into it, so its
field bounds are the only bounds). `render_still_shot` does, in order: resolve the characters and check that each
has the method's embedding (encoder id + model hash) before any weights load; compose the prompt from the
profiles; pick the render bucket; render each candidate (seed, seed+1, ...); resize to the requested size; score
each character's region with the consistency scorer; write the PNGs with their full metadata.
"""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine._core.errors import EngineWarning, InputError
from engine._core.text import MAX_TEXT_LEN, check_text

from .character_lora import character_lora_use

if TYPE_CHECKING:
    from engine.api import Engine

MAX_CANDIDATES = 16
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Box = tuple[Fraction, Fraction, Fraction, Fraction]
Scale = Annotated[float, Field(ge=0.0, le=2.0)]


class StillShot(BaseModel):
    """One still request. Every bound of a still lives here (flags, job files and API requests validate into it)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    preset: str = Field(min_length=1, max_length=200, description="Preset name or YAML path.")
    prompt: str = Field(description="The scene, in the user's words (the character clauses are added to it).")
    negative_prompt: str | None = Field(None, description="Negative prompt (default: the preset's + drift clause).")
    characters: list[str] = Field(
        default_factory=list, max_length=4, description="Library names/ids or .flx files, one per region (max 4)."
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of the first candidate; candidate k uses seed+k.")
    candidates: int = Field(1, ge=1, le=MAX_CANDIDATES, description="Images to render (each scored).")
    width: int | None = Field(None, ge=16, le=4096, description="Output width (rendered at the nearest bucket).")
    height: int | None = Field(None, ge=16, le=4096, description="Output height.")
    steps: int | None = Field(None, ge=1, le=200)
    guidance: float | None = Field(None, ge=0.0, le=30.0)
    scheduler: str | None = Field(None, description="A stills scheduler name (see presets), default the preset's.")
    identity_strength: Scale = Field(1.0, description="Multiplies every identity scale; 0 renders the plain model.")
    identity_scale: Scale | None = Field(None, description="IP-Adapter scale of the identity tokens.")
    structure_scale: Scale | None = Field(None, description="FaceID-Plus-v2 CLIP face-structure weight.")
    lora_scale: Scale | None = Field(None, description="FaceID companion LoRA weight.")
    controlnet_scale: Scale | None = Field(None, description="InstantID IdentityNet scale.")
    character_lora: Scale | None = Field(
        None,
        description="Weight of the character's own LoRA (`flx train`; one character with a LoRA per image, its "
        "trigger token is added to the prompt). None: not used. On a plain preset the LoRA is the identity; on "
        "faceid/instantid it adds to it.",
    )
    identity_start: Fraction | None = Field(None, description="Identity injection starts at this fraction of steps.")
    identity_end: Fraction | None = Field(None, description="...and stops at this one.")
    yaw: float | None = Field(None, ge=-90.0, le=90.0, description="InstantID: pose template at this head turn.")
    layout: Literal["auto"] | list[Box] = Field("auto", description="`auto` (side by side) or one box per character.")
    compose: bool = Field(True, description="Add the profiles' identity clauses to the prompt (prompts.yaml).")
    score: bool = Field(True, description="Score every candidate with the consistency scorer.")
    score_encoder: str | None = Field(None, description="Encoder for scoring (default: dlib-resnet-v1).")

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _text(cls, v):
        return None if v is None else check_text(v, "prompt", max_len=MAX_TEXT_LEN)


def shot_from_flags(flags: dict[str, str], **values) -> StillShot:
    """A `StillShot` from CLI values; a bound violated is one `InputError` naming the flag and the allowed range."""
    from engine._core.validation import one_line

    try:
        return StillShot(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        raise InputError(one_line(StillShot, e, flags)) from None


@dataclass
class StillCandidate:
    path: Path
    seed: int
    score: Any | None  # StillScore
    metadata: dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass
class StillOutcome:
    candidates: list[StillCandidate]

    @property
    def best(self) -> StillCandidate:
        """The highest-scoring candidate (the first when none is scored)."""
        scored = [c for c in self.candidates if c.score is not None and c.score.score is not None]
        return max(scored, key=lambda c: c.score.score) if scored else self.candidates[0]

    @property
    def path(self) -> Path:
        return self.best.path


def candidate_path(out: Path, k: int, n: int) -> Path:
    return out if n == 1 else out.with_name(f"{out.stem}-{k + 1}{out.suffix}")


def _face_crop_224(ref, analyzer) -> np.ndarray | None:
    """A 224 px ArcFace-aligned crop of a reference (FaceID-Plus's CLIP input): re-aligned from the stored 1024 px
    head crop, else the stored 112 px aligned crop upscaled."""
    from PIL import Image

    from engine.characters.service import decode_image
    from engine.identity.geometry import norm_crop

    if ref.head_crop:
        head = decode_image(ref.head_crop, f"head crop of {ref.source_filename}")
        faces = analyzer.detect(head)
        if faces:
            return norm_crop(head, max(faces, key=lambda f: f.area).kps5, image_size=224)
    if ref.aligned_png:
        small = decode_image(ref.aligned_png, f"aligned crop of {ref.source_filename}")
        return np.asarray(Image.fromarray(small).resize((224, 224), Image.Resampling.LANCZOS))
    return None


def identity_input(character, info, analyzer):
    """The stills pipelines' `IdentityInput` for a character and the method's encoder (`info`, with model hash)."""
    from engine.characters import identity_reference
    from engine.identity.keypoints import unit_from_kps
    from engine.pipelines.stills_sdxl.conditioning import IdentityInput

    ref = identity_reference(character, info)  # refuses another encoder or model file, with the reembed fix
    emb = character.embeddings[info.encoder_id]
    raw = [float(np.linalg.norm(v)) for v in emb.per_reference if v is not None]
    refs = sorted(
        (r for r in character.references if r.head_crop or r.aligned_png), key=lambda r: -r.weight
    )  # the strongest reference gives the structure crop and the keypoints
    best = refs[0] if refs else None
    crop = _face_crop_224(best, analyzer) if best is not None else None
    kps = None
    if best is not None and len(best.kps5) == 5:
        try:
            kps = unit_from_kps(np.asarray(best.kps5, dtype=np.float64))
        except ValueError:
            kps = None
    return IdentityInput(
        character_id=character.id,
        version=character.version,
        name=character.name,
        encoder_id=info.encoder_id,
        model_sha256=info.model_sha256,
        embedding=np.asarray(ref.embedding, dtype=np.float32),
        raw_norm=float(np.mean(raw)) if raw else 1.0,
        face_crop=crop,
        kps_unit=kps,
        reference=best.source_filename if best is not None else "",
    )


def render_still_shot(engine: Engine, shot: StillShot, out: str | Path) -> StillOutcome:
    """Render, score and write the shot's candidates (see the module docstring). Returns what was written."""
    from engine.identity.layout import layout
    from engine.outputs import check_output_path, save_png
    from engine.pipelines.buckets import fit_to, native_size
    from engine.presets import IDENTITY_PIPELINES, SIDE_MULTIPLE

    out = check_output_path(Path(out), ".png")
    preset = engine.preset(shot.preset)
    identity = preset.pipeline in IDENTITY_PIPELINES
    if identity and not shot.characters:
        raise InputError(
            f"preset '{preset.name}' conditions on a character: pass --character NAME (up to 4), "
            "or render without one with preset stills-sdxl"
        )
    if not identity and shot.characters and shot.character_lora is None:
        raise InputError(
            f"preset '{preset.name}' renders without identity conditioning: use stills-faceid-sdxl or "
            "stills-instantid-sdxl (or their tiny twins) to render a character, or --method lora for one with a "
            "trained LoRA"
        )
    if not identity and len(shot.characters) > 1:
        raise InputError(
            f"preset '{preset.name}' conditions only through a character's LoRA, one per image: pass one "
            "--character, or use stills-faceid-sdxl / stills-instantid-sdxl for several"
        )
    boxes = None if shot.layout == "auto" else shot.layout
    if boxes is not None and len(boxes) != len(shot.characters):
        raise InputError(f"{len(boxes)} layout boxes for {len(shot.characters)} characters: give one per character")
    characters = [engine.character(spec) for spec in shot.characters]
    lora_use = character_lora_use(characters, shot.character_lora, preset, engine.store)
    # Everything the user can get wrong is checked before the (multi-GB) weights load.
    identities = []
    if identity:
        info = _method_info(engine, preset)
        analyzer = engine.analyzer()
        identities = []
        for ch in characters:
            key = (ch.id, ch.version, info.encoder_id, info.model_sha256)
            if key not in engine._identity_inputs:
                engine._identity_inputs[key] = identity_input(ch, info, analyzer)
            identities.append(engine._identity_inputs[key])
    composed = None
    prompt, negative = shot.prompt, shot.negative_prompt
    if shot.compose and characters:
        from engine.prompts import compose_prompt

        composed = compose_prompt(shot.prompt, characters, family="sdxl", templates=engine.prompt_templates())
        for note in composed.notes:  # what the composer left out (token estimates are handled by chunking)
            if "token" not in note:
                warnings.warn(f"prompt: {note}", EngineWarning, stacklevel=2)
        prompt = composed.prompt
        drift = ", ".join(c.text for c in composed.clauses if c.kind == "drift")
        if negative is not None or preset.negative_prompt:  # the user's or the preset's negative, + the drift terms
            negative = ", ".join(p for p in ((preset.negative_prompt if negative is None else negative), drift) if p)
        else:
            negative = composed.negative_prompt  # the template's base negative + the drift terms
    if lora_use is not None:
        prompt = lora_use.prompt(prompt)
    out_w = shot.width or preset.width
    out_h = shot.height or preset.height
    nw, nh = native_size(out_w, out_h, preset.width, preset.height, SIDE_MULTIPLE[preset.pipeline])
    regions = layout(len(characters), nw, nh, boxes) if characters else None
    scorer = None
    references = []
    if shot.score and characters:
        scorer = engine.analyzer(shot.score_encoder)
        references, score_notes = _score_references(engine, characters, scorer)
    loaded = engine.pipeline(shot.preset)
    candidates = []
    with _scheduler(loaded, shot.scheduler), lora_use.applied(loaded) if lora_use else nullcontext():
        for k in range(shot.candidates):
            seed = shot.seed + k
            common = dict(width=nw, height=nh, steps=shot.steps, guidance=shot.guidance)
            if identity:
                from engine.pipelines.stills_sdxl.render import render_identity_still

                result = render_identity_still(
                    loaded,
                    prompt,
                    negative,
                    seed,
                    identities,
                    regions=regions,
                    strength=shot.identity_strength,
                    scale=shot.identity_scale,
                    structure_scale=shot.structure_scale,
                    lora_scale=shot.lora_scale,
                    controlnet_scale=shot.controlnet_scale,
                    start=shot.identity_start,
                    end=shot.identity_end,
                    yaw=shot.yaw,
                    **common,
                )
            else:
                from engine.pipelines.render import render_still

                result = render_still(loaded, prompt, negative, seed, **common)
            image = fit_to(result.images[0], out_w, out_h)
            meta = result.metadata
            meta["parameters"].update(
                width=out_w, height=out_h, render_width=nw, render_height=nh,
                resize=None if (nw, nh) == (out_w, out_h) else "lanczos (centre crop to aspect)",
            )  # fmt: skip
            meta["scene"] = shot.prompt
            meta["candidate"] = {"index": k, "of": shot.candidates, "first_seed": shot.seed}
            meta["prompt_composer"] = composed.metadata() if composed else None
            if lora_use is not None:
                meta["character_lora"] = lora_use.record()
                meta["models"]["character_lora"] = {"id": f"character:{lora_use.character.id}", **lora_use.record()}
                if meta.get("character") is None:  # a plain preset: the LoRA is the character's identity
                    meta["character"] = {"id": lora_use.character.id, "version": lora_use.character.version}
            score = None
            if scorer is not None and references:
                out_regions = [_scale_region(r, out_w / nw, out_h / nh) for r in regions]
                score = _score(np.asarray(image.convert("RGB")), references, scorer, out_regions)
                meta["consistency"] = score.model_dump(mode="json")
            elif shot.score and characters:
                meta["consistency"] = {"skipped": score_notes}
            path = save_png(candidate_path(out, k, shot.candidates), image, meta)
            candidates.append(StillCandidate(path, seed, score, meta))
    return StillOutcome(candidates)


def _method_info(engine: Engine, preset):
    """The `EncoderInfo` (id + model hash from the verified, licence-checked lock) of the preset's face pack."""
    from engine.identity.insightface_backend import ARCFACE_SAME_PERSON_SIMILARITY
    from engine.identity.registry import encoder_for_component
    from engine.identity.types import EncoderInfo

    store = engine.store
    face = store.manifest.get(preset.components.face_analysis)
    store.require(face.id)  # verified and licence-checked like every component
    sha = (store.unverified_hashes(face.id) or store.component_hashes(face.id)).get(face.encoder.recognition_file)
    return EncoderInfo(
        encoder_for_component(store.manifest, face.id), 512, "cosine", 1.0 - ARCFACE_SAME_PERSON_SIMILARITY, sha
    )


def _score_references(engine: Engine, characters, analyzer):
    """The characters' references for the scoring encoder; when one lacks it, scoring is skipped with the reason."""
    from engine.characters import identity_reference

    refs = []
    for ch in characters:
        try:
            refs.append(identity_reference(ch, analyzer.info))
        except InputError as e:
            return [], str(e)
    return refs, ""


def _score(image: np.ndarray, references, analyzer, regions):
    from engine.scoring.stills import score_still

    return score_still(image, references, analyzer, regions)


def _scale_region(r, sx: float, sy: float):
    from engine.identity.layout import Region

    x0, y0, x1, y1 = r.box
    fx0, fy0, fx1, fy1 = r.face
    return Region(
        r.index,
        (math.floor(x0 * sx), math.floor(y0 * sy), math.ceil(x1 * sx), math.ceil(y1 * sy)),
        (fx0 * sx, fy0 * sy, fx1 * sx, fy1 * sy),
    )


class _scheduler:
    """Swap the pipeline's scheduler for one shot (and put the preset's back after)."""

    def __init__(self, loaded, name: str | None):
        self.loaded, self.name, self.saved = loaded, name, None

    def __enter__(self):
        if self.name is None:
            return self
        import diffusers

        from engine.pipelines.loading import STILL_SCHEDULERS

        if self.name not in STILL_SCHEDULERS:
            raise InputError(f"unknown scheduler '{self.name}': choose one of {', '.join(STILL_SCHEDULERS)}")
        cls_name, extra = STILL_SCHEDULERS[self.name]
        pipe = self.loaded.pipe
        self.saved = pipe.scheduler
        pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            self.loaded.pipe.scheduler = self.saved
        return False


__all__ = ["MAX_CANDIDATES", "StillCandidate", "StillOutcome", "StillShot", "render_still_shot", "shot_from_flags"]
