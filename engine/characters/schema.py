"""What a character is: the creator-facing profile and the versioned record stored in the library and `.flx` files.

Every model keeps unknown fields (`extra="allow"`): a file written by a newer engine (a newer minor format
version) loads here, and its extra fields are written back unchanged on export, so an older engine never
silently drops data. Binary parts (image crops, embedding vectors, LoRA bytes) are plain attributes excluded
from the JSON dump; `flx_format` stores them as tensors.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from engine._core.errors import ConfigError, InputError
from engine._core.text import MAX_LABEL_LEN, MAX_NAME_LEN, MAX_TEXT_LEN, check_name, check_text

# Encoder ids end up in tensor names and file names: letters, digits and `_.-` only.
ENCODER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
SHA256_RE = r"^[0-9a-f]{64}$"

# The bounds of every number a character record holds (one source: the CLI, the library and the .flx reader all
# validate through these models).
MAX_VERSION = 2**31 - 1  # versions are counters; SQLite and JSON readers elsewhere hold them as 64-bit integers
MAX_REF_WEIGHT = 100.0  # merge weights are relative: 100:1 is already "only this photo"
MAX_COORD = 1e6  # pixel coordinates (boxes, landmarks)
MAX_IMAGE_SIDE = 100_000
MAX_LIST = 64  # tags, accessories, anchor details, expressions, forbidden variations
MAX_POINTS = 128  # landmarks per face

Name = Annotated[str, AfterValidator(check_name)]
Label = Annotated[str, AfterValidator(lambda v: check_text(v, "text", max_len=MAX_LABEL_LEN, multiline=False))]
Text = Annotated[str, AfterValidator(lambda v: check_text(v, "text", max_len=MAX_TEXT_LEN, multiline=True))]
Version = Annotated[int, Field(ge=1, le=MAX_VERSION)]
Coord = Annotated[float, Field(ge=-MAX_COORD, le=MAX_COORD)]
Angle = Annotated[float, Field(ge=-360.0, le=360.0)]


def utc_now() -> str:
    """An ISO-8601 UTC timestamp to the second (`2025-01-31T12:00:00Z`), the only time format in records."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    """Parse a record time; times without a zone are taken as UTC (so comparisons never mix naive/aware)."""
    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def validate_name(name: str) -> str:
    """A character name, by the one rule for names (`engine._core.text.check_name`). Raises `InputError`."""
    return check_name(name, "character name", max_len=MAX_NAME_LEN)


def validate_encoder_id(encoder_id: str) -> str:
    if not isinstance(encoder_id, str) or not ENCODER_ID_RE.match(encoder_id) or ".." in encoder_id:
        raise InputError(f"encoder id {str(encoder_id)[:40]!r} is invalid: use letters, digits, '-', '_' or '.'")
    return encoder_id


class _Open(BaseModel):
    """Base for every stored model: unknown fields survive load -> save; NaN and infinity are refused in every float."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, allow_inf_nan=False)


class AnchorDetail(_Open):
    """A fixed, identity-defining detail (a mole, a scar, a tattoo) and which side of the face it is on."""

    description: Label = Field(description="What it is, e.g. 'small mole above the lip'.")
    side: Literal["left", "right", "centre", "none"] = Field(
        default="none", description="The subject's own left/right (not the viewer's); 'none' if not sided."
    )

    @field_validator("side", mode="before")
    @classmethod
    def _spelling(cls, v: Any) -> Any:
        return "centre" if isinstance(v, str) and v.strip().lower() == "center" else v


class CharacterProfile(_Open):
    """The written description creators use to lock a character's look, beyond what the face embedding holds."""

    name: Label | None = Field(default=None, description="Display name (the library key is the character's name).")
    age_range: Label | None = Field(default=None, description="e.g. '28-32'.")
    ethnicity: Label | None = Field(default=None, description="Ethnicity or background, in the creator's words.")
    skin_tone: Label | None = None
    face_shape: Label | None = None
    eye_shape: Label | None = None
    eye_colour: Label | None = None
    hair_colour: Label | None = None
    hair_texture: Label | None = None
    hair_style: Label | None = None
    makeup: Label | None = None
    wardrobe_baseline: Label | None = Field(default=None, description="Default outfit; variants override it.")
    permanent_accessories: list[Label] = Field(
        default_factory=list, max_length=MAX_LIST, description="Always worn (glasses, earrings)."
    )
    anchor_details: list[AnchorDetail] = Field(default_factory=list, max_length=MAX_LIST)
    energy: Label | None = Field(default=None, description="Overall presence, e.g. 'calm, warm'.")
    expression_set: list[Label] = Field(
        default_factory=list, max_length=MAX_LIST, description="Expressions this character uses."
    )
    voice_archetype: Label | None = None
    forbidden_variations: list[Label] = Field(
        default_factory=list, max_length=MAX_LIST, description="Changes that break the character."
    )
    notes: Text | None = None
    tags: list[Label] = Field(
        default_factory=list, max_length=MAX_LIST, description="Free labels for `flx character list --tag`."
    )


def load_profile(path: str | Path) -> CharacterProfile:
    """Read a profile from a YAML or JSON file. Errors name the file and the offending key (`ConfigError`)."""
    from engine._core.yaml_io import read_document

    p = Path(path)
    data = read_document(p, "profile file")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"profile file {p} must hold a mapping of fields (name: ..., hair_colour: ...)")
    try:
        return CharacterProfile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"profile file {p}: {first_error(e)}: fix that value") from None


def first_error(e: ValidationError) -> str:
    """`key 'a.b': message` for the first error of a validation, printable and on one line."""
    from engine._core.text import printable

    err = e.errors()[0]
    key = ".".join(str(x) for x in err["loc"]) or "(top level)"
    msg = str(err["msg"]).replace("Value error, ", "")
    return printable(f"key '{key}': {msg}", limit=300)


class ParentRef(_Open):
    """The base character (id + version) a variant was made from."""

    character_id: str
    version: Version

    @field_validator("character_id")
    @classmethod
    def _uuid(cls, v: str) -> str:
        return str(uuid.UUID(v))


class Pose(_Open):
    yaw: Angle = 0.0
    pitch: Angle = 0.0
    roll: Angle = 0.0


class ReferenceRecord(_Open):
    """One reference photo as analysed at creation: where it came from, the chosen face, its crops and quality.

    `aligned_png` (112x112 ArcFace-aligned crop, PNG) and `head_crop` (head and shoulders, `head_crop_format`)
    are bytes held outside the JSON; they are None when a file was exported without references.
    """

    source_filename: Label = Field(description="The photo's file name only (no folders: they can be private).")
    source_sha256: str = Field(pattern=SHA256_RE, description="sha256 of the photo file as given.")
    weight: float = Field(default=1.0, gt=0.0, le=MAX_REF_WEIGHT)
    face_index: int = Field(default=0, ge=0, le=1000, description="Which detected face was used.")
    image_size: tuple[
        Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)], Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]
    ] = Field(description="(width, height) of the photo after EXIF rotation.")
    box: tuple[Coord, Coord, Coord, Coord]
    detector_score: float = Field(default=0.0, ge=-1e3, le=1e3)
    landmarks: list[tuple[Coord, Coord]] = Field(default_factory=list, max_length=MAX_POINTS)
    kps5: list[tuple[Coord, Coord]] = Field(default_factory=list, max_length=5)
    pose: Pose = Field(default_factory=Pose)
    quality: dict[str, Any] | None = Field(default=None, description="QualityReport.model_dump() at creation.")
    head_crop_format: Literal["jpeg", "png"] = "jpeg"
    aligned_png: bytes | None = Field(default=None, exclude=True, repr=False)
    head_crop: bytes | None = Field(default=None, exclude=True, repr=False)


class EncoderEmbeddings(_Open):
    """A character's identity in one encoder's space: the merged vector plus one vector per reference.

    `per_reference[i]` belongs to `references[i]` (None when that reference had no face for this encoder).
    The vectors are float32 tensors in the file, not JSON.
    """

    encoder_id: str = Field(pattern=ENCODER_ID_RE.pattern)
    dim: int = Field(ge=1, le=8192)
    metric: Literal["euclidean", "cosine"]
    threshold: float = Field(gt=0.0, le=100.0)
    model_sha256: str | None = Field(
        default=None,
        pattern=SHA256_RE,
        description="sha256 of the recognition model file that made these vectors; embeddings made by another "
        "model file are refused (format 1.1+; None in older files, which must be re-embedded).",
    )
    merge: Label = Field(default="weighted-mean-unit-rescaled", description="How `vector` was computed (merge.py).")
    vector: list[float] = Field(default_factory=list, exclude=True, repr=False)
    per_reference: list[list[float] | None] = Field(default_factory=list, exclude=True, repr=False)
    leave_one_out_distances: list[Annotated[float, Field(ge=0.0, le=1e3)] | None] = Field(
        default_factory=list, description="Per reference: distance to the merge of the other references."
    )


MAX_TRAINING_SET = 1024  # images a LoRA records it was trained on
MAX_STEPS = 10_000_000
DIGEST_RE = r"^(sha256:)?[0-9a-f]{64}$"  # a file sha256, or a component digest (`engine.models.store.digest_of`)


class LoraInfo(_Open):
    """An identity LoRA trained for this character. `data` is the LoRA's own `.safetensors` file, verbatim.

    Format 1.3 adds what the trainer reports (target, base hash, rank, alpha, trigger, training set, best
    checkpoint); files from 1.0-1.2 carry only `base_model_id`, `sha256` and `size`, and read with these defaults.
    """

    base_model_id: Label = Field(description="The weights component (or model id) it was trained on.")
    sha256: str = Field(pattern=SHA256_RE, description="sha256 of `data` (the .safetensors file).")
    size: int = Field(ge=0, le=2**40)
    target: Literal["sdxl-unet", "wan-transformer"] | None = Field(
        default=None, description="What it adapts: the SDXL UNet (+ text encoders) or the Wan transformer (1.3)."
    )
    base_model_sha256: str | None = Field(
        default=None, pattern=DIGEST_RE, description="Digest of the base component it was trained on (1.3)."
    )
    rank: int | None = Field(default=None, ge=1, le=1024, description="LoRA rank r.")
    alpha: float | None = Field(default=None, gt=0.0, le=1e4, description="LoRA alpha (the delta scales by alpha/r).")
    text_encoder: bool = Field(default=False, description="It also adapts the text encoder(s).")
    experts: list[Literal["transformer", "transformer_2"]] | None = Field(
        default=None,
        max_length=2,
        description="Wan: the transformers it loads into (None: `transformer` only, the high-noise expert of a Wan "
        "2.2 two-expert model).",
    )
    steps: int | None = Field(default=None, ge=0, le=MAX_STEPS, description="Training steps run.")
    trigger: Label | None = Field(
        default=None, max_length=64, pattern=r"^\S+$", description="The rare token used in the training captions."
    )
    training_set: list[Annotated[str, Field(pattern=SHA256_RE)]] = Field(
        default_factory=list, max_length=MAX_TRAINING_SET, description="sha256 of each training image."
    )
    best_step: int | None = Field(default=None, ge=0, le=MAX_STEPS, description="Step of the kept checkpoint.")
    best_likeness: float | None = Field(
        default=None, ge=0.0, le=100.0, description="Likeness score (percent) of the kept checkpoint."
    )
    final_loss: float | None = Field(default=None, ge=0.0, le=1e6)
    data: bytes | None = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="after")
    def _steps(self) -> LoraInfo:
        if self.best_step is not None and self.steps is not None and self.best_step > self.steps:
            raise ValueError(f"best_step {self.best_step} is after the last step ({self.steps})")
        return self


class PackImage(_Open):
    """One image of the character's pack (the canonical anchor stills): the best-scoring candidate of one shot.

    `image_png` is the PNG itself (a `.flx` tensor `pack.<i>.image`), held outside the JSON like reference crops.
    """

    shot: Label = Field(description="Pack shot id, e.g. front-neutral (configs/pack.yaml).")
    label: Label = ""
    preset: Label = Field(description="Preset that rendered it.")
    seed: int = Field(ge=0, le=2**63 - 1)
    score: float | None = Field(default=None, ge=0.0, le=100.0, description="Consistency score (percent).")
    yaw: float | None = Field(default=None, ge=-180.0, le=180.0, description="Measured head turn, degrees.")
    target_yaw: float | None = Field(default=None, ge=-180.0, le=180.0)
    on_pose: bool = Field(default=True, description="The measured yaw is within the shot's tolerance of its target.")
    candidates: int = Field(default=1, ge=1, le=64, description="Candidates it was chosen from.")
    image_sha256: str = Field(pattern=SHA256_RE)
    image_png: bytes | None = Field(default=None, exclude=True, repr=False)


class Character(_Open):
    """One version of a character: identity (embeddings), look (profile), references, lineage.

    Versions are immutable: every change (rename, re-embed, profile edit) makes version N+1 with the same `id`.
    """

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    name: Name
    version: Version = 1
    parent: ParentRef | None = None
    variant: Label | None = Field(default=None, description="Variant label, set when this is a variant of `parent`.")
    created: str = Field(default_factory=utc_now, description="When version 1 was made.")
    updated: str = Field(default_factory=utc_now, description="When this version was made.")
    engine_version: Label = ""
    change: Text = Field(default="created", description="What this version changed (shown by `log`).")
    profile: CharacterProfile = Field(default_factory=CharacterProfile)
    references: list[ReferenceRecord] = Field(default_factory=list, max_length=256)
    embeddings: dict[str, EncoderEmbeddings] = Field(default_factory=dict)
    lora: LoraInfo | None = None
    pack: list[PackImage] = Field(
        default_factory=list, max_length=64, description="The character pack (best image per canonical shot)."
    )
    references_included: bool = Field(default=True, exclude=True)
    extra_tensors: dict[str, tuple[str, list[int], bytes]] = Field(default_factory=dict, exclude=True, repr=False)
    _doc_extra: dict = PrivateAttr(default_factory=dict)  # unknown top-level `.flx` document keys (newer minor)

    @field_validator("id")
    @classmethod
    def _uuid(cls, v: str) -> str:
        return str(uuid.UUID(v))

    @field_validator("created", "updated")
    @classmethod
    def _iso(cls, v: str) -> str:
        parse_time(v)
        return v

    def next_version(self, change: str, *, now: str | None = None) -> Character:
        """A deep copy as version N+1 (blobs included), stamped with `change` and the update time."""
        new = self.model_copy(deep=True)
        new.version = self.version + 1
        new.updated = now or utc_now()
        new.change = change
        return new


def finite(values, what: str = "value") -> list[float]:
    """Floats for JSON (numpy scalars -> float). NaN/inf cannot be stored and would mean a broken measurement, so
    they raise `InputError` (never a silent 0)."""
    out = []
    for v in values:
        f = float(v)
        if not math.isfinite(f):
            raise InputError(f"{what} is {f}: the face measurement failed; try another photo")
        out.append(f)
    return out
