"""Score reports and scoring options: pydantic models, so a report is JSON that validates back exactly.

A report carries everything needed to re-run it: encoder id and threshold, protocol and sampling,
options, the character id/version, each file's sha256 and the engine version; and, per media file, whether
it decoded whole (`MediaReport.damage`), so a score over a part of a file is never read as the whole.

Schema 2 (from 1): `MediaReport.damage`, `OverallSummary.damaged_media`, `EncoderRecord.model_sha256`,
`ScoreReport.commercial_use`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine._core.errors import InputError
from engine._core.validation import allowed_range  # one wording of bounds for every model

SCHEMA_VERSION = 2

Protocol = Literal["full", "opens2v"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ScoreCurve(_Model):
    """Piecewise-linear map from embedding distance d to a per-frame score in percent (docs/scoring.md).

    Anchors are in units of the encoder's calibrated threshold t: 100 % for d <= full_at * t,
    `pass_score` % at d = t, 0 % for d >= zero_at * t, linear in between.
    """

    full_at: float = Field(0.6, gt=0.0, lt=1.0, description="d/t at and below which a frame scores 100 %.")
    pass_score: float = Field(50.0, gt=0.0, lt=100.0, description="Score of a frame exactly at the threshold.")
    zero_at: float = Field(1.25, gt=1.0, le=3.0, description="d/t at and above which a frame scores 0 %.")

    def score(self, distance: float, threshold: float) -> float:
        r = distance / threshold
        if r <= self.full_at:
            return 100.0
        if r <= 1.0:
            return 100.0 - (100.0 - self.pass_score) * (r - self.full_at) / (1.0 - self.full_at)
        if r < self.zero_at:
            return self.pass_score * (self.zero_at - r) / (self.zero_at - 1.0)
        return 0.0


class ScoringOptions(_Model):
    """How frames are sampled, tracked and judged. Defaults suit 24-30 fps clips up to 1080p."""

    detect_size: int = Field(
        640, ge=0, le=4096, description="Detect on a copy downscaled to this longest side (0 = full size)."
    )
    upsample: int = Field(
        0, ge=0, le=2, description="Detector upsampling steps (1 finds ~2x smaller faces, ~4x slower)."
    )
    detect_every: int | None = Field(
        None, ge=1, le=120, description="Run the detector every k-th frame (default: about 6 times a second)."
    )
    embed_every_s: float = Field(
        0.5, gt=0.0, le=10.0, description="Re-embed the character's tracked face at least this often (seconds)."
    )
    reembed_others_s: float = Field(
        2.0, gt=0.0, le=60.0, description="Re-embed other tracked faces at least this often (seconds)."
    )
    track_iou: float = Field(0.3, gt=0.0, lt=1.0, description="IoU at which a detection continues a track.")
    reembed_iou: float = Field(
        0.6, gt=0.0, le=1.0, description="Re-embed a tracked face when its box overlaps its last embedded box less."
    )
    max_faces: int = Field(8, ge=1, le=64, description="Embed at most this many faces per frame (largest first).")
    refine: bool = Field(True, description="Bisect between keyframes whose verdicts differ to find exact boundaries.")
    min_swap_s: float = Field(
        0.25,
        ge=0.0,
        le=10.0,
        description="Shortest run of non-matching frames reported as an identity swap (seconds).",
    )
    min_swap_frames: int = Field(3, ge=1, le=1000, description="...and never fewer frames than this (videos).")
    opens2v_frames: int = Field(32, ge=1, le=1024, description="Frames sampled by the opens2v protocol.")
    curve: ScoreCurve = Field(default_factory=ScoreCurve, description="Distance -> per-frame score mapping.")

    def detect_interval(self, fps: float | None) -> int:
        if self.detect_every:
            return self.detect_every
        return max(1, int(round((fps or 24.0) / 6.0)))

    @classmethod
    def from_flags(cls, flags: dict[str, str], **values) -> ScoringOptions:
        """Options from user-given values (None = default). The bounds live only on this model; a value
        outside them is one `InputError` line naming the flag (`flags`: field -> flag) and the allowed range."""
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as e:
            err = e.errors()[0]
            name = str(err["loc"][0]) if err.get("loc") else "?"
            if name not in cls.model_fields:
                raise InputError(
                    f"unknown scoring option '{name}': use one of {', '.join(cls.model_fields)}"
                ) from None
            flag = flags.get(name, name)
            raise InputError(f"{flag} {err.get('input')!r} is not allowed: use {allowed_range(cls, name)}") from None


class EncoderRecord(_Model):
    encoder_id: str
    dim: int
    metric: Literal["euclidean", "cosine"]
    threshold: float
    model_sha256: str | None = Field(None, description="sha256 of the recognition model file that made the vectors.")


class ReferenceRecord(_Model):
    character_id: str
    version: int
    name: str
    encoder_id: str
    source: str = Field("", description="Where the reference came from (library, .flx path, photos).")


class FrameScore(_Model):
    """One frame. `source` says how its values were obtained:

    embedded: faces detected and the character's face embedded on this frame;
    detected: faces detected here, identity carried from the face's track (distance interpolated);
    interpolated: not analysed; values interpolated between the neighbouring analysed frames.
    """

    index: int
    time_s: float | None = None
    file: str | None = None
    source: Literal["embedded", "detected", "interpolated"]
    n_faces: int
    face_index: int | None = Field(None, description="Index of the character's face among this frame's faces.")
    box: tuple[float, float, float, float] | None = None
    face_width_px: float | None = None
    yaw: float | None = None
    inter_ocular_px: float | None = None
    inter_ocular_norm: float | None = Field(None, description="Eye-centre distance / face box width.")
    distance: float | None = None
    similarity: float | None = Field(None, description="Cosine similarity (opens2v: clamped at 0).")
    score: float | None = Field(None, description="Per-frame score in percent (ScoreCurve).")
    passes: bool | None = Field(None, description="distance < threshold.")


class Segment(_Model):
    """A run of frames [start_frame, end_frame] (inclusive); times are [start_s, end_s)."""

    start_frame: int
    end_frame: int
    start_s: float | None = None
    end_s: float | None = None
    n_frames: int
    mean_distance: float | None = None


class Drift(_Model):
    """Linear trends over the media (least squares over frames with the character's face)."""

    similarity_per_s: float | None = None
    distance_per_s: float | None = None
    similarity_per_frame: float | None = None
    distance_per_frame: float | None = None
    eye_spacing_start_px: float | None = None
    eye_spacing_end_px: float | None = None
    eye_spacing_change_px: float | None = None
    eye_spacing_change_pct: float | None = None
    eye_spacing_norm_change_pct: float | None = Field(
        None, description="Change of eye spacing / face width: drift of face shape, independent of zoom."
    )


class MediaSummary(_Model):
    frames_total: int = Field(description="Frames in the media.")
    frames_scored: int = Field(description="Frames with a per-frame record (all, or the sampled ones).")
    frames_analysed: int = Field(description="Frames the detector actually ran on.")
    frames_embedded: int = Field(description="Frames where a face was embedded.")
    frames_with_face: int
    detection_rate: float
    mean_similarity: float | None = None
    p10_similarity: float | None = None
    min_similarity: float | None = None
    mean_distance: float | None = None
    max_distance: float | None = None
    pass_rate: float | None = Field(None, description="Share of frames with a face whose face passes the threshold.")
    score: float | None = Field(None, description="Consistency score in percent (mean per-frame score).")
    facesim: float | None = Field(None, description="opens2v: mean cosine similarity clamped at 0.")
    drift: Drift = Field(default_factory=Drift)
    swaps: list[Segment] = Field(default_factory=list)
    message: str = ""


class Sampling(_Model):
    protocol: Protocol
    frames_total: int
    detect_every: int | None = None
    detect_size: int
    frame_indices: list[int] | None = Field(None, description="opens2v: the sampled frame indices.")


class SkippedFile(_Model):
    path: str
    reason: str


class MediaDamage(_Model):
    """Whether a media file decoded whole. Its score covers only `frames_decoded` frames: with `damaged`
    set, `flx score --min-score` refuses it unless `--allow-damaged` is given (docs/scoring.md).

    Videos: packets ffmpeg rejected (decoding goes on past each), frames it output but flagged corrupt, and
    frames missing against what the container says (duration x fps, else its frame count). Image sets:
    image files that did not load. `unreadable`: nothing at all could be read (the media has no frames).
    """

    damaged: bool
    frames_expected: int | None = Field(None, description="Frames the container says it holds (image sets: files).")
    expected_from: Literal["duration", "frame_count", "files"] | None = None
    frames_decoded: int = Field(0, description="Frames that decoded (image sets: images that loaded).")
    decode_errors: int = Field(0, description="Packets that failed to decode (image sets: files that failed).")
    corrupt_frames: int = Field(0, description="Frames ffmpeg output with its corrupt flag set (errors concealed).")
    errors: list[str] = Field(default_factory=list, max_length=5, description="The first error messages, shortened.")
    unreadable: str | None = Field(None, description="Why nothing could be read; null when something decoded.")

    @property
    def frames_missing(self) -> int:
        return max(0, (self.frames_expected or 0) - self.frames_decoded) if self.frames_expected else 0

    def describe(self) -> str:
        """One phrase for summaries and gate messages: "5 of 72 frames decoded, 3 decode errors"."""
        if self.unreadable:
            return "could not be read"
        unit = "images loaded" if self.expected_from == "files" else "frames decoded"
        parts = [
            f"{self.frames_decoded} of {self.frames_expected} {unit}"
            if self.frames_expected is not None
            else f"{self.frames_decoded} {unit}"
        ]
        if self.decode_errors and self.expected_from == "files":
            parts.append(f"{self.decode_errors} failed to load")
        elif self.decode_errors:
            parts.append(f"{self.decode_errors} decode error{'s' if self.decode_errors != 1 else ''}")
        if self.corrupt_frames:
            parts.append(f"{self.corrupt_frames} corrupt frame{'s' if self.corrupt_frames != 1 else ''}")
        return ", ".join(parts)


class MediaReport(_Model):
    path: str | None = None
    kind: Literal["video", "image", "images", "frames"]
    sha256: str | None = Field(None, description="sha256 of the file (images: of the sorted per-file hashes).")
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    duration_s: float | None = None
    sampling: Sampling
    summary: MediaSummary
    frames: list[FrameScore]
    skipped: list[SkippedFile] = Field(default_factory=list)
    damage: MediaDamage | None = Field(None, description="Decode record of a file (null for frames in memory).")
    mean_embedding: list[float] | None = Field(None, description="Mean of the character-face embeddings.")
    first_embedding: list[float] | None = None
    last_embedding: list[float] | None = None


class Seam(_Model):
    """The cut between clip k and clip k+1: last frame of k against the first frame of k+1."""

    from_clip: int
    to_clip: int
    distance: float | None = None
    similarity: float | None = None
    passes: bool | None = None


class SequenceReport(_Model):
    seams: list[Seam]
    clip_scores: list[float | None]
    clip_distances: list[list[float | None]] = Field(
        description="Distance between the clips' mean character embeddings (symmetric matrix)."
    )
    max_clip_distance: float | None = None
    worst_seam: int | None = Field(None, description="Index into `seams` of the largest distance.")


class OverallSummary(_Model):
    media_count: int
    score: float | None = Field(None, description="Mean of the media scores (media without faces left out).")
    facesim: float | None = None
    detection_rate: float | None = None
    pass_rate: float | None = None
    swaps: int = 0
    damaged_media: int = Field(0, description="Media that did not decode whole (`MediaReport.damage`).")


class ScoreReport(_Model):
    """The result of scoring media against one character with one encoder."""

    schema_version: Literal[2] = SCHEMA_VERSION
    engine_version: str
    created_at: datetime
    protocol: Protocol
    encoder: EncoderRecord
    reference: ReferenceRecord
    options: ScoringOptions
    media: list[MediaReport]
    sequence: SequenceReport | None = None
    overall: OverallSummary
    commercial_use: bool | None = Field(None, description="Whether the run was in commercial mode (null: unknown).")

    @model_validator(mode="after")
    def _check(self) -> ScoreReport:
        if self.reference.encoder_id != self.encoder.encoder_id:
            raise ValueError("reference and encoder ids differ")
        return self
