"""What a character is: the creator-facing profile and the versioned record stored in the library and `.flx` files.

Every model keeps unknown fields (`extra="allow"`): a file written by a newer engine (a newer minor format
version) loads here, and its extra fields are written back unchanged on export, so an older engine never
silently drops data. Binary parts (image crops, embedding vectors, LoRA bytes) are plain attributes excluded
from the JSON dump; `flx_format` stores them as tensors.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from engine._core.errors import ConfigError, InputError

# Names and encoder ids end up in file names, tensor names and terminal output: keep them printable.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
ENCODER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
MAX_NAME_LEN = 100


def utc_now() -> str:
    """An ISO-8601 UTC timestamp to the second (`2025-01-31T12:00:00Z`), the only time format in records."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    """Parse a record time; times without a zone are taken as UTC (so comparisons never mix naive/aware)."""
    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def validate_name(name: str) -> str:
    """A character name: 1-100 printable characters, trimmed. Raises `InputError`."""
    if not isinstance(name, str) or not name.strip():
        raise InputError("character name is empty: give a name such as `ava`")
    name = name.strip()
    if len(name) > MAX_NAME_LEN or _CONTROL.search(name):
        raise InputError(f"character name {name[:40]!r} is invalid: use up to {MAX_NAME_LEN} printable characters")
    return name


def validate_encoder_id(encoder_id: str) -> str:
    if not isinstance(encoder_id, str) or not ENCODER_ID_RE.match(encoder_id) or ".." in encoder_id:
        raise InputError(f"encoder id {str(encoder_id)[:40]!r} is invalid: use letters, digits, '-', '_' or '.'")
    return encoder_id


class _Open(BaseModel):
    """Base for every stored model: unknown fields survive load -> save."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class AnchorDetail(_Open):
    """A fixed, identity-defining detail (a mole, a scar, a tattoo) and which side of the face it is on."""

    description: str = Field(description="What it is, e.g. 'small mole above the lip'.")
    side: Literal["left", "right", "centre", "none"] = Field(
        default="none", description="The subject's own left/right (not the viewer's); 'none' if not sided."
    )

    @field_validator("side", mode="before")
    @classmethod
    def _spelling(cls, v: Any) -> Any:
        return "centre" if isinstance(v, str) and v.strip().lower() == "center" else v


class CharacterProfile(_Open):
    """The written description creators use to lock a character's look, beyond what the face embedding holds."""

    name: str | None = Field(default=None, description="Display name (the library key is the character's name).")
    age_range: str | None = Field(default=None, description="e.g. '28-32'.")
    ethnicity: str | None = Field(default=None, description="Ethnicity or background, in the creator's words.")
    skin_tone: str | None = None
    face_shape: str | None = None
    eye_shape: str | None = None
    eye_colour: str | None = None
    hair_colour: str | None = None
    hair_texture: str | None = None
    hair_style: str | None = None
    makeup: str | None = None
    wardrobe_baseline: str | None = Field(default=None, description="Default outfit; variants override it.")
    permanent_accessories: list[str] = Field(default_factory=list, description="Always worn (glasses, earrings).")
    anchor_details: list[AnchorDetail] = Field(default_factory=list)
    energy: str | None = Field(default=None, description="Overall presence, e.g. 'calm, warm'.")
    expression_set: list[str] = Field(default_factory=list, description="Expressions this character uses.")
    voice_archetype: str | None = None
    forbidden_variations: list[str] = Field(default_factory=list, description="Changes that break the character.")
    notes: str | None = None
    tags: list[str] = Field(default_factory=list, description="Free labels for `flx character list --tag`.")


def load_profile(path: str | Path) -> CharacterProfile:
    """Read a profile from a YAML or JSON file. Errors name the file and the offending key (`ConfigError`)."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"profile file not found: {p}: check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read profile file {p}: {e}: save it as UTF-8 YAML or JSON") from None
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        where = str(e).replace("\n", " ")
        raise ConfigError(f"profile file {p} is not valid YAML/JSON ({where[:160]}): fix the syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"profile file {p} must hold a mapping of fields (name: ..., hair_colour: ...)")
    try:
        return CharacterProfile.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise ConfigError(f"profile file {p}: key '{key}': {err['msg']}: fix that value") from None


class ParentRef(_Open):
    """The base character (id + version) a variant was made from."""

    character_id: str
    version: int = Field(ge=1)


class Pose(_Open):
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0


class ReferenceRecord(_Open):
    """One reference photo as analysed at creation: where it came from, the chosen face, its crops and quality.

    `aligned_png` (112x112 ArcFace-aligned crop, PNG) and `head_crop` (head and shoulders, `head_crop_format`)
    are bytes held outside the JSON; they are None when a file was exported without references.
    """

    source_filename: str = Field(description="The photo's file name only (no folders: they can be private).")
    source_sha256: str = Field(description="sha256 of the photo file as given.")
    weight: float = Field(default=1.0, gt=0.0)
    face_index: int = Field(default=0, ge=0, description="Which detected face was used.")
    image_size: tuple[int, int] = Field(description="(width, height) of the photo after EXIF rotation.")
    box: tuple[float, float, float, float]
    detector_score: float = 0.0
    landmarks: list[tuple[float, float]] = Field(default_factory=list)
    kps5: list[tuple[float, float]] = Field(default_factory=list)
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

    encoder_id: str
    dim: int = Field(ge=1, le=8192)
    metric: Literal["euclidean", "cosine"]
    threshold: float
    merge: str = Field(default="weighted-mean-unit-rescaled", description="How `vector` was computed (merge.py).")
    vector: list[float] = Field(default_factory=list, exclude=True, repr=False)
    per_reference: list[list[float] | None] = Field(default_factory=list, exclude=True, repr=False)
    leave_one_out_distances: list[float | None] = Field(
        default_factory=list, description="Per reference: distance to the merge of the other references."
    )


class LoraInfo(_Open):
    """An identity LoRA trained for this character. `data` is the LoRA's own `.safetensors` file, verbatim."""

    base_model_id: str
    sha256: str
    size: int = Field(ge=0)
    data: bytes | None = Field(default=None, exclude=True, repr=False)


class Character(_Open):
    """One version of a character: identity (embeddings), look (profile), references, lineage.

    Versions are immutable: every change (rename, re-embed, profile edit) makes version N+1 with the same `id`.
    """

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    name: str
    version: int = Field(default=1, ge=1)
    parent: ParentRef | None = None
    variant: str | None = Field(default=None, description="Variant label, set when this is a variant of `parent`.")
    created: str = Field(default_factory=utc_now, description="When version 1 was made.")
    updated: str = Field(default_factory=utc_now, description="When this version was made.")
    engine_version: str = ""
    change: str = Field(default="created", description="What this version changed (shown by `log`).")
    profile: CharacterProfile = Field(default_factory=CharacterProfile)
    references: list[ReferenceRecord] = Field(default_factory=list)
    embeddings: dict[str, EncoderEmbeddings] = Field(default_factory=dict)
    lora: LoraInfo | None = None
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


def finite(values) -> list[float]:
    """Floats for JSON (numpy scalars -> float); NaN/inf are refused by the JSON writer, so map them to 0."""
    out = []
    for v in values:
        f = float(v)
        out.append(f if math.isfinite(f) else 0.0)
    return out
