"""Sequences: the "30 s recipe" of chained clips with a drift guard, stitched into one 24 fps MP4.

A sequence file (YAML/JSON, `SequenceSpec`) lists shots; each shot is cut into segments of at most
`segment_seconds`. Segment k+1 continues from segment k: a VACE preset gets k's last native frames as conditioning
frames (kept by the mask), an image-to-video preset gets k's last frame as its start image. After each segment the
consistency scorer runs; a segment under `drift.min_score` is rendered again with new seeds (up to `drift.retries`),
and, if it still drifts, re-anchored: started again from the character's own reference image instead of the previous
segment. The best attempt is kept. Segments are stored under `<out>.segments/` named by a content key (the
segment's parameters, the character version, the preset's models and the key of the segment it continues), so a
re-run reuses every finished segment and renders only what changed or is missing. The report has per-segment
attempts and scores, the seams between segments and the drift over the sequence.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine._core.errors import ConfigError, InputError

from .video import MAX_SECONDS, Fraction, VideoShot

if TYPE_CHECKING:
    from engine.api import Engine

MAX_SEQUENCE_SECONDS = 600.0
CONTEXT_FRAMES = 5  # VACE continuation: the previous segment's last native frames it starts from
SEGMENT_FORMAT = 1  # part of every segment's content key: bump when segments are made differently


class DriftGuard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min_score: float = Field(60.0, ge=0.0, le=100.0, description="A segment scoring below is re-rendered.")
    retries: int = Field(2, ge=0, le=8, description="New seeds tried for a drifted segment.")
    reanchor: bool = Field(True, description="Still drifting: restart the segment from the character's reference.")


class SequenceShot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    prompt: str = Field(min_length=1, max_length=4000)
    seconds: float = Field(5.0, gt=0.0, le=MAX_SECONDS * 4)
    motion: Literal["low", "medium", "high"] | Fraction | None = None
    end_image: str | None = None
    start_image: str | None = None
    character: str | None = None


class SequenceSpec(BaseModel):
    """A sequence file (`flx sequence FILE`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    version: Literal[1] = 1
    preset: str = Field(min_length=1, max_length=200)
    character: str | None = None
    seed: int = Field(0, ge=0, le=2**63 - 1)
    fps: int = Field(24, ge=1, le=60)
    segment_seconds: float = Field(5.0, gt=0.0, le=MAX_SECONDS)
    crossfade: float = Field(0.0, ge=0.0, le=2.0, description="Seconds of crossfade at each seam (0 = cut).")
    audio: str | None = Field(None, description="Audio file muxed in (replacing any audio).")
    drift: DriftGuard = Field(default_factory=DriftGuard)
    shots: list[SequenceShot] = Field(min_length=1, max_length=64)
    width: int | None = Field(None, ge=16, le=1920)
    height: int | None = Field(None, ge=16, le=1920)
    steps: int | None = Field(None, ge=1, le=200)
    reference_strength: Fraction | None = None
    character_lora: Annotated[float, Field(ge=0.0, le=2.0)] | None = Field(
        None, description="Weight of the character's own LoRA (`flx train` on the preset's base) in every segment."
    )


def load_sequence(path: str | Path) -> SequenceSpec:
    """A sequence file, validated; errors name the file and key (`ConfigError`). Relative paths inside it are
    taken relative to the file."""
    from engine._core.validation import one_line
    from engine._core.yaml_io import read_document

    p = Path(path)
    data = read_document(p, "sequence file")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a sequence file is a mapping (preset:, character:, shots: [...])")
    try:
        spec = SequenceSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{p}: key '{key}': {one_line(SequenceSpec, e).split(': ', 1)[-1]}") from None
    total = sum(s.seconds for s in spec.shots)
    if total > MAX_SEQUENCE_SECONDS:
        raise ConfigError(f"{p}: {total:g} s in all, over the {MAX_SEQUENCE_SECONDS:g} s limit: split the sequence")

    def rel(v: str | None) -> str | None:
        return None if v is None or Path(v).is_absolute() else str((p.parent / v).resolve())

    shots = [
        s.model_copy(
            update={"end_image": rel(s.end_image) or s.end_image, "start_image": rel(s.start_image) or s.start_image}
        )
        for s in spec.shots
    ]
    return spec.model_copy(update={"shots": shots, "audio": rel(spec.audio) or spec.audio})


@dataclass
class Segment:
    index: int
    shot: int
    seconds: float
    shot_spec: SequenceShot


def plan_segments(spec: SequenceSpec) -> list[Segment]:
    """Each shot cut into equal segments of at most `segment_seconds`."""
    out = []
    for si, shot in enumerate(spec.shots):
        n = max(1, math.ceil(shot.seconds / spec.segment_seconds - 1e-9))
        for _ in range(n):
            out.append(Segment(len(out), si, shot.seconds / n, shot))
    return out


def _content_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _score_of(outcome) -> float | None:
    return None if outcome.score is None else outcome.score.overall.score


@dataclass
class SequenceResult:
    path: Path
    report_path: Path
    segments: list[dict]
    report: Any


def run_sequence(engine: Engine, spec: SequenceSpec, out: str | Path) -> SequenceResult:
    """Render (or reuse), guard, stitch and report a sequence. See the module docstring."""
    from engine._core.atomic import atomic_write_text, ensure_writable_dir
    from engine.outputs import check_output_path

    from .video import reference_images, render_video_shot

    out = check_output_path(Path(out), ".mp4")
    preset = engine.preset(spec.preset)
    kind = preset.pipeline
    if kind not in ("wan-vace", "wan-i2v", "wan-ti2v"):
        raise InputError(
            f"preset '{preset.name}' ({kind}) cannot continue a clip: use a VACE preset (continues from frames) or "
            "an image-to-video preset (continues from the last frame)"
        )
    work = ensure_writable_dir(out.with_name(out.name + ".segments"))
    character = engine.character(spec.character) if spec.character else None
    anchor = None
    if character is not None:
        refs = reference_images(character)
        anchor = refs[0][0] if refs else None
    models = {k: v.get("sha256") for k, v in (engine.pipeline(spec.preset).models or {}).items()}
    segments = plan_segments(spec)
    records: list[dict] = []
    prev_key = None
    prev_native: np.ndarray | None = None
    files: list[Path] = []
    for seg in segments:
        who = seg.shot_spec.character or spec.character
        ch = engine.character(who) if who else None
        key = _content_key(
            {
                "format": SEGMENT_FORMAT, "seg": seg.index, "shot": seg.shot_spec.model_dump(), "seconds": seg.seconds, "preset": spec.preset,
                "models": models, "character": [ch.id, ch.version] if ch else None, "prev": prev_key,
                "seed": spec.seed, "fps": spec.fps, "size": [spec.width, spec.height], "steps": spec.steps,
                "strength": spec.reference_strength, "drift": spec.drift.model_dump(),
                **({"character_lora": spec.character_lora} if spec.character_lora is not None else {}),
            }
        )  # fmt: skip
        seg_path = work / f"segment-{seg.index:03d}-{key}.mp4"
        tail_path = work / f"segment-{seg.index:03d}-{key}.tail.npy"
        record_path = work / f"segment-{seg.index:03d}-{key}.record.json"
        if seg_path.is_file() and tail_path.is_file() and record_path.is_file():
            record = json.loads(record_path.read_text())
            record["reused"] = True
            prev_native = np.load(tail_path, allow_pickle=False)
        else:
            record, prev_native = _render_segment(
                engine, spec, seg, ch, kind, prev_native, anchor, seg_path, render_video_shot
            )
            np.save(tail_path.with_suffix(".part.npy"), prev_native, allow_pickle=False)
            Path(str(tail_path.with_suffix(".part.npy"))).replace(tail_path)
            atomic_write_text(record_path, json.dumps(record, indent=1, sort_keys=True))
            record["reused"] = False
        record["file"] = str(seg_path)
        records.append(record)
        files.append(seg_path)
        prev_key = key

    from engine.video import stitch

    stitched = stitch(files, out, fps=spec.fps, crossfade_s=spec.crossfade, audio=spec.audio)
    report = None
    if character is not None:
        from engine.characters import identity_reference
        from engine.scoring import score_sequence

        analyzer = engine.analyzer()
        try:
            report = score_sequence(files, identity_reference(character, analyzer.info), analyzer)
        except InputError:
            report = None
    summary = {
        "sequence": str(out),
        "preset": spec.preset,
        "character": {"id": character.id, "version": character.version} if character else None,
        "segments": records,
        "stitched": {
            "encode_s": stitched.encode_s,
            "decode_s": stitched.decode_s,
            "frames": stitched.frames,
            "duration_s": stitched.duration_s,
            "fps": stitched.fps,
            "crossfade_frames": stitched.crossfade_frames,
            "clip_frames": stitched.clip_frames,
            "audio": stitched.audio,
        },
        "seams": [s.model_dump() for s in report.sequence.seams] if report is not None else None,
        "clip_scores": report.sequence.clip_scores if report is not None else None,
        "overall_score": report.overall.score if report is not None else None,
    }
    report_path = out.with_suffix(".report.json")
    atomic_write_text(report_path, json.dumps(summary, indent=1, sort_keys=True, default=str))
    return SequenceResult(out, report_path, records, report)


def _render_segment(engine, spec, seg, character, kind, prev_native, anchor, seg_path, render_video_shot):
    """Render one segment with the drift guard; returns its record and its last native frames."""
    attempts = []
    best = None

    def shot_for(seed: int, from_anchor: bool) -> tuple[VideoShot, Any, int]:
        start_image, start_frames, overlap = seg.shot_spec.start_image if seg.index == 0 else None, None, 0
        if prev_native is not None and not from_anchor:
            if kind == "wan-vace":
                start_frames = prev_native[-CONTEXT_FRAMES:]
                overlap = len(start_frames)
            else:
                start_image = _temp_png(seg_path, prev_native[-1])
                overlap = 1  # the start frame is the previous segment's last
        elif kind != "wan-vace" and start_image is None and anchor is not None:
            start_image = _temp_png(seg_path, anchor)
        shot = VideoShot(
            preset=spec.preset,
            prompt=seg.shot_spec.prompt,
            character=character.id if character else None,
            seconds=seg.seconds,
            motion=seg.shot_spec.motion,
            start_image=start_image,
            end_image=seg.shot_spec.end_image,
            seed=seed,
            fps=spec.fps,
            width=spec.width,
            height=spec.height,
            steps=spec.steps,
            reference_strength=spec.reference_strength,
            character_lora=spec.character_lora,
            score=character is not None,
        )
        return shot, start_frames, overlap

    tries = [(spec.seed + 1009 * seg.index + 7919 * k, False) for k in range(1 + spec.drift.retries)]
    for i, (seed, from_anchor) in enumerate(tries + [(spec.seed + 1009 * seg.index + 104729, True)]):
        if i == len(tries) and not (spec.drift.reanchor and prev_native is not None):
            break  # nothing to re-anchor from / to
        shot, start_frames, overlap = shot_for(seed, from_anchor)
        tmp = seg_path.with_name(f".attempt-{i}-{seg_path.name}")
        outcome = render_video_shot(engine, shot, tmp, start_frames=start_frames, overlap=overlap)
        score = _score_of(outcome)
        if character is not None and score is None:
            score = 0.0  # the character's face was not found at all: the segment drifted
        attempts.append({"seed": seed, "reanchored": from_anchor, "score": score, "timing": outcome.timing})
        if best is None or (score or 0.0) > (best[1] or 0.0):
            if best is not None:
                best[0].path.unlink(missing_ok=True)
                best[0].path.with_suffix(".json").unlink(missing_ok=True)
            best = (outcome, score, from_anchor)
        else:
            outcome.path.unlink(missing_ok=True)
            outcome.path.with_suffix(".json").unlink(missing_ok=True)
        if score is None or score >= spec.drift.min_score:
            break
    outcome, score, anchored = best
    side = outcome.path.with_suffix(".json")
    outcome.path.replace(seg_path)
    if side.exists():
        side.replace(seg_path.with_suffix(".json"))  # the segment's own metadata sidecar
    for p in seg_path.parent.glob(f".start-*-{seg_path.stem}.png"):
        p.unlink(missing_ok=True)
    record = {
        "index": seg.index,
        "shot": seg.shot,
        "seconds": seg.seconds,
        "score": score,
        "drifted": score is not None and score < spec.drift.min_score,
        "reanchored": anchored,
        "attempts": attempts,
        "continues_from": None
        if prev_native is None or anchored
        else ("frames" if kind == "wan-vace" else "last frame"),
    }
    return record, outcome.native_frames[-CONTEXT_FRAMES:]


def _temp_png(seg_path: Path, frame: np.ndarray) -> str:
    """A start image handed to the next segment as a file (the shot schema takes paths)."""
    from PIL import Image

    p = seg_path.with_name(f".start-{hashlib.sha256(frame.tobytes()).hexdigest()[:12]}-{seg_path.stem}.png")
    Image.fromarray(np.ascontiguousarray(frame)).save(p, format="PNG")
    return str(p)


__all__ = [
    "DriftGuard",
    "SequenceResult",
    "SequenceShot",
    "SequenceSpec",
    "load_sequence",
    "plan_segments",
    "run_sequence",
]
