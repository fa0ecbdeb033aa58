"""A video shot: one character, a scene and motion, turned into a scored 24 fps MP4.

`VideoShot` is the one schema of a clip request (flags, sequence files, jobs and the server validate into it).
`render_video_shot` does, in order: resolve the character and its reference images (pack images first, else the
best frontal references) before any weights load; compose the prompt (`wan` templates: scene, identity clause,
motion clause; forbidden variations into the negative); choose the frame count from the seconds at the model's
native frame rate (4k+1 frames); render (with Stand-In reference attention where the preset has it); bring the
frames to 24 fps (motion-compensated interpolation by ffmpeg's `minterpolate`, or documented repetition) and to the
requested size (Lanczos); write the MP4 with its metadata and sidecar; score every frame against the character.
"""

from __future__ import annotations

import hashlib
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine._core.errors import InputError
from engine._core.text import MAX_TEXT_LEN, check_text

from .character_lora import character_lora_use

if TYPE_CHECKING:
    from engine.api import Engine

MAX_SECONDS = 30.0
MAX_OUTPUT_WIDTH, MAX_OUTPUT_HEIGHT = 1920, 1920
# Motion, in the words the prompt gets (Wan follows motion described in the prompt; nothing else changes).
MOTION_WORDS = {
    "low": "subtle, slow movement, steady camera",
    "medium": "natural movement, gentle camera motion",
    "high": "dynamic, fast movement, moving camera",
}
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


def motion_words(motion: str | float | None) -> str | None:
    """`low`/`medium`/`high` or a number 0..1 (<= 1/3 low, >= 2/3 high) -> the motion clause; None -> none."""
    if motion is None:
        return None
    if isinstance(motion, str):
        if motion not in MOTION_WORDS:
            raise InputError(f"--motion {motion!r}: use low, medium, high or a number from 0 to 1")
        return MOTION_WORDS[motion]
    level = float(motion)
    return MOTION_WORDS["low" if level <= 1 / 3 else "high" if level >= 2 / 3 else "medium"]


class VideoShot(BaseModel):
    """One clip request. Every bound of a clip lives here."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    preset: str = Field(min_length=1, max_length=200)
    prompt: str = Field(description="What happens, in the user's words (identity and motion clauses are added).")
    negative_prompt: str | None = None
    character: str | None = Field(None, description="Library name/id or .flx: the identity (one per clip).")
    seconds: float | None = Field(None, gt=0.0, le=MAX_SECONDS, description="Clip length (default: the preset's).")
    motion: Literal["low", "medium", "high"] | Fraction | None = None
    start_image: str | None = Field(None, description="Start frame (image-to-video).")
    end_image: str | None = Field(None, description="End frame, where the model supports one.")
    seed: int = Field(0, ge=0, le=2**63 - 1)
    steps: int | None = Field(None, ge=1, le=200)
    guidance: float | None = Field(None, ge=0.0, le=30.0)
    width: int | None = Field(None, ge=16, le=MAX_OUTPUT_WIDTH, description="Output width (rendered natively).")
    height: int | None = Field(None, ge=16, le=MAX_OUTPUT_HEIGHT)
    fps: int = Field(24, ge=1, le=60, description="Frame rate of the MP4.")
    interpolation: Literal["minterpolate", "repeat"] = Field(
        "minterpolate", description="How native-rate frames reach `fps`: motion-compensated, or repeated."
    )
    reference_strength: Fraction | None = Field(None, description="Stand-In reference strength (0 = stock).")
    reference_start: Fraction | None = None
    reference_end: Fraction | None = None
    experimental: bool = Field(False, description="Run untrained reference attention where no weights exist.")
    character_lora: Annotated[float, Field(ge=0.0, le=2.0)] | None = Field(
        None,
        description="Weight of the character's own LoRA (`flx train` on the preset's Wan base; its trigger token is "
        "added to the prompt). None: not used. It acts on the video and on Stand-In's reference stream alike.",
    )
    score: bool = True

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _text(cls, v):
        return None if v is None else check_text(v, "prompt", max_len=MAX_TEXT_LEN)


def shot_from_values(flags: dict[str, str] | None = None, **values) -> VideoShot:
    from engine._core.validation import one_line

    try:
        return VideoShot(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        raise InputError(one_line(VideoShot, e, flags)) from None


@dataclass
class VideoOutcome:
    path: Path
    frames: np.ndarray = field(repr=False)  # the written frames (24 fps, output size)
    native_frames: np.ndarray = field(repr=False)  # as rendered (native fps, native size)
    score: Any | None  # ScoreReport
    metadata: dict[str, Any] = field(repr=False, default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)  # seconds: render, interpolate, resize, score, encode


def frames_for(seconds: float | None, native_fps: int, default: int, overlap: int = 0) -> int:
    """4k+1 frames covering `seconds` at the model's native rate (Wan needs 4k+1; at least 5), plus `overlap` frames
    that a continuation repeats from the previous segment (they are cut before the clip is written)."""
    if seconds is None:
        return default
    n = max(5, math.ceil(seconds * native_fps - 1e-9) + 1 + overlap)
    return 4 * math.ceil((n - 1) / 4) + 1


def reference_images(character) -> list[tuple[np.ndarray, float, str]]:
    """(RGB image, weight, label) for reference attention: the character's pack front and 3/4 images when it has
    a pack, else its frontal-most reference head crops (up to 3, by weight)."""
    from engine.characters.service import decode_image

    out = []
    pack = {p.shot: p for p in getattr(character, "pack", []) if p.image_png is not None and p.on_pose}
    for shot, weight in (("front-neutral", 1.0), ("three-quarter-left", 0.5), ("three-quarter-right", 0.5)):
        if shot in pack:
            out.append((decode_image(pack[shot].image_png, f"pack image {shot}"), weight, f"pack:{shot}"))
    if out:
        return out
    refs = [r for r in character.references if r.head_crop]
    refs.sort(key=lambda r: (abs(r.pose.yaw), -r.weight))
    return [
        (decode_image(r.head_crop, r.source_filename), float(r.weight), f"ref:{r.source_filename}") for r in refs[:3]
    ]


def _load_rgb(path: str, what: str):
    from PIL import Image

    from engine.identity.images import load_image

    try:
        return Image.fromarray(load_image(path))
    except InputError as e:
        raise InputError(f"{what}: {e}") from None


def render_video_shot(
    engine: Engine, shot: VideoShot, out: str | Path, *, start_frames=None, overlap: int = 0
) -> VideoOutcome:
    """Render, convert, write and score one clip. `start_frames` (VACE continuation) are the previous segment's
    last frames; with an I2V preset the sequence runner passes the last frame as `start_image` instead. `overlap`
    is how many leading native frames repeat the previous segment (VACE: the conditioning frames; I2V: the start
    frame): they are rendered but cut before the clip is converted and written, so stitched segments do not stutter."""
    from engine.outputs import check_output_path, save_mp4

    out = check_output_path(Path(out), ".mp4")
    preset = engine.preset(shot.preset)
    if preset.task != "video":
        raise InputError(f"preset '{preset.name}' makes stills: use a video preset (see `flx doctor`)")
    character = engine.character(shot.character) if shot.character else None
    lora_use = character_lora_use([character] if character else [], shot.character_lora, preset, engine.store)
    reference_cfg = getattr(preset, "reference", None)
    use_reference = character is not None and (reference_cfg is not None or shot.experimental)
    references = []
    if use_reference:
        references = reference_images(character)
        if not references:
            raise InputError(
                f"character '{character.name}' has no reference crops or pack images for reference attention: "
                f"recreate it from photos or run `flx pack {character.name}`"
            )
    start = _load_rgb(shot.start_image, "--start-image") if shot.start_image else None
    end = _load_rgb(shot.end_image, "--end-image") if shot.end_image else None
    composed = None
    prompt, negative = shot.prompt, shot.negative_prompt
    if character is not None:
        from engine.prompts import compose_prompt

        composed = compose_prompt(
            shot.prompt,
            [character],
            family="wan",
            motion=motion_words(shot.motion),
            templates=engine.prompt_templates(),
        )
        prompt = composed.prompt
        drift = ", ".join(c.text for c in composed.clauses if c.kind == "drift")
        base = preset.negative_prompt if negative is None else negative
        negative = (
            ", ".join(p for p in (base, drift) if p) if (base or negative is not None) else composed.negative_prompt
        )
    elif shot.motion is not None:
        prompt = f"{shot.prompt}. {motion_words(shot.motion)}"
    if lora_use is not None:
        prompt = lora_use.prompt(prompt)
    native_fps = preset.native_fps or preset.fps
    n_frames = frames_for(shot.seconds, native_fps, preset.num_frames, overlap)
    loaded = engine.pipeline(shot.preset)
    common: dict[str, Any] = dict(
        num_frames=n_frames, steps=shot.steps, guidance=shot.guidance, fps=shot.fps, last_image=end
    )
    if start_frames is not None:
        common["conditioning_frames"] = list(start_frames)
    with lora_use.applied(loaded) if lora_use else nullcontext():
        result = _render(loaded, shot, prompt, negative, start, references, use_reference, character, engine, common)
    native = result.frames[overlap:]
    if shot.seconds is not None:  # Wan renders 4k+1 frames: keep exactly the asked length (round(s x fps) frames)
        native = native[: max(1, round(shot.seconds * native_fps))]
    t0 = time.perf_counter()
    frames, timing = _to_output(native, native_fps, shot)
    convert_s = time.perf_counter() - t0
    timing["overlap_cut"] = overlap
    timing["rendered_frames"] = int(result.frames.shape[0])
    meta = result.metadata
    meta["scene"] = shot.prompt
    meta["motion"] = shot.motion
    meta["output"] = timing
    meta["prompt_composer"] = composed.metadata() if composed else None
    if lora_use is not None:
        meta["character_lora"] = lora_use.record()
        meta["models"]["character_lora"] = {"id": f"character:{lora_use.character.id}", **lora_use.record()}
    if character is not None:
        meta["character"] = {"id": character.id, "version": character.version, "name": character.name}
        meta["references"] = [
            {"label": label, "weight": w, "sha256": hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()}
            for img, w, label in references
        ]
    report = None
    t0 = time.perf_counter()
    if shot.score and character is not None:
        report = _score(engine, frames, shot.fps, character, meta)
    score_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    path = save_mp4(out, frames, fps=shot.fps, metadata=meta)
    encode_s = time.perf_counter() - t0
    conv = timing.get("frame_rate_conversion") or {}
    spent = {
        "render": float(meta.get("duration_s") or 0.0),
        "interpolate": float(conv.get("seconds") or 0.0),
        "resize": max(0.0, convert_s - float(conv.get("seconds") or 0.0)),
        "score": score_s,
        "encode": encode_s,
    }
    return VideoOutcome(path, frames, native, report, meta, spent)


def _render(loaded, shot: VideoShot, prompt, negative, start, references, use_reference, character, engine, common):
    """The clip itself: reference attention where the shot uses it, else the preset's plain pipeline."""
    if use_reference:
        from engine.pipelines.video_wan.reference import render_reference_clip

        return render_reference_clip(
            loaded,
            prompt,
            [(img, w) for img, w, _ in references],
            image=start,
            negative_prompt=negative,
            seed=shot.seed,
            strength=shot.reference_strength,
            start=shot.reference_start,
            end=shot.reference_end,
            experimental=shot.experimental,
            analyzer=engine.analyzer(),
            character={"id": character.id, "version": character.version},
            **common,
        )
    from engine.pipelines.render import render_clip

    return render_clip(loaded, prompt, start, negative, shot.seed, **common)


def _to_output(native: np.ndarray, native_fps: int, shot: VideoShot) -> tuple[np.ndarray, dict]:
    """Native-rate, native-size frames -> the MP4's frame rate and size, with a record of what was done."""
    from engine.video.fps import to_fps

    record: dict[str, Any] = {"native_fps": native_fps, "fps": shot.fps, "native_frames": int(native.shape[0])}
    frames = native
    if native_fps != shot.fps:
        frames, how = to_fps(native, native_fps, shot.fps, method=shot.interpolation)
        record["frame_rate_conversion"] = how
    else:
        record["frame_rate_conversion"] = None
    h, w = frames.shape[1:3]
    ow, oh = shot.width or w, shot.height or h
    if (ow, oh) != (w, h):
        from engine.video.resize import resize_frames

        frames = resize_frames(frames, (ow, oh))
        record["resize"] = {"from": [w, h], "to": [ow, oh], "filter": "lanczos"}
    record["frames"] = int(frames.shape[0])
    return frames, record


def _score(engine: Engine, frames: np.ndarray, fps: int, character, meta: dict):
    """The consistency report of the written frames (dlib encoder), recorded in the metadata; skipped (with the
    reason) when the character has no embedding of it."""
    from engine.characters import identity_reference
    from engine.scoring import score_frames

    analyzer = engine.analyzer()
    try:
        ref = identity_reference(character, analyzer.info)
    except InputError as e:
        meta["consistency"] = {"skipped": str(e)}
        return None
    report = score_frames(list(frames), float(fps), ref, analyzer, reference_source=f"character:{character.id}")
    s = report.media[0].summary
    meta["consistency"] = {
        "score": report.overall.score,
        "detection_rate": s.detection_rate,
        "mean_distance": s.mean_distance,
        "swaps": len(s.swaps),
        "encoder_id": report.encoder.encoder_id,
    }
    return report


__all__ = ["MOTION_WORDS", "VideoOutcome", "VideoShot", "frames_for", "motion_words", "render_video_shot"]
