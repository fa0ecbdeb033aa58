"""`weights_manifest.json`: one entry per weights component the engine knows how to use.

The schema is documented in docs/weights.md. Entries name where files come from (a Hub repo at
a revision, a URL, or `generated` for the tiny random-weight twins written by
scripts/make_tiny_weights.py), which files are needed, the licence, size and VRAM needs.
Checksums are NOT in the manifest: they are recorded in the lock file on fetch.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine._core.errors import ConfigError, ModelNotFound


class Role(str, Enum):
    sdxl_base = "sdxl-base"
    ip_adapter_faceid_plusv2_sdxl = "ip-adapter-faceid-plusv2-sdxl"
    instantid_controlnet = "instantid-controlnet"
    instantid_ip_adapter = "instantid-ip-adapter"
    clip_vision_h = "clip-vision-h"
    face_analysis_antelopev2 = "face-analysis-antelopev2"
    face_analysis_buffalo_l = "face-analysis-buffalo_l"
    wan21_i2v_14b_480p = "wan21-i2v-14b-480p"
    wan21_i2v_14b_720p = "wan21-i2v-14b-720p"
    wan22_ti2v_5b = "wan22-ti2v-5b"
    wan21_t2v_1_3b = "wan21-t2v-1.3b"
    wan21_t2v_14b = "wan21-t2v-14b"
    wan22_t2v_a14b = "wan22-t2v-a14b"
    standin_wan21_t2v_14b = "standin-wan21-t2v-14b"
    standin_wan22_t2v_a14b_high = "standin-wan22-t2v-a14b-high"
    standin_wan22_t2v_a14b_low = "standin-wan22-t2v-a14b-low"
    wan21_vace_14b = "wan21-vace-14b"
    wan21_flf2v_14b_720p = "wan21-flf2v-14b-720p"
    wan22_i2v_a14b = "wan22-i2v-a14b"
    # Step-distilled speed LoRAs (4 steps, no CFG): lightx2v for Wan 2.1, Wan2.2-Lightning per expert.
    lightx2v_wan21_t2v_14b = "lightx2v-wan21-t2v-14b"
    lightx2v_wan21_i2v_14b_480p = "lightx2v-wan21-i2v-14b-480p"
    lightning_wan22_t2v_a14b_high = "lightning-wan22-t2v-a14b-high"
    lightning_wan22_t2v_a14b_low = "lightning-wan22-t2v-a14b-low"


class HubSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["hub"] = "hub"
    repo_id: str = Field(description="Hugging Face Hub repo id, e.g. stabilityai/stable-diffusion-xl-base-1.0.")
    revision: str = Field(default="main", description="Branch, tag or commit; the lock records the resolved commit.")


class UrlSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["url"] = "url"
    url: str = Field(description="Direct download URL (https).")
    archive: Literal["zip", "none"] = Field(
        default="none", description="Unpack this archive into the component folder."
    )
    strip_prefix: str = Field(default="", description="Folder inside the archive whose contents become the component.")


class GeneratedSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["generated"] = "generated"
    builder: str = Field(description="Builder name in scripts/tiny_weights (tiny random-weight twins).")
    seed: int = Field(default=0, ge=0, description="Seed: the same seed writes the same bytes.")
    twin_of: str | None = Field(default=None, description="Manifest id of the real component this twin mirrors.")


Source = Annotated[HubSource | UrlSource | GeneratedSource, Field(discriminator="type")]


class License(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(description="SPDX id or licence name as the publisher states it.")
    url: str | None = None
    commercial_use: bool = Field(description="False where the publisher restricts use to non-commercial research.")
    note: str | None = None


class EncoderDecl(BaseModel):
    """The identity encoder a face-analysis pack provides. Its id is what characters store with their embeddings,
    so each component (a real pack and its tiny twin alike) declares its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="Encoder id, e.g. arcface-antelopev2-glintr100."
    )
    recognition_file: str = Field(description="The recognition (embedding) model file inside the component.")
    detector_file: str | None = Field(default=None, description="The face detector file, when the pack has one.")
    description: str = ""


class ConvertSpec(BaseModel):
    """A publisher file the store converts once after fetch, import or generation (a torch pickle into
    safetensors). Only the converted file is locked and loaded; the pickle is read once, with
    `torch.load(weights_only=True)`, and must be a flat {name: tensor} dict whose names all match `keys`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["torch-pickle-to-safetensors"] = "torch-pickle-to-safetensors"
    source: str = Field(description="The publisher's file (one of `files`), e.g. a `.ckpt`.")
    target: str = Field(pattern=r"\.safetensors$", description="The converted file the lock records and loads read.")
    unwrap: list[str] = Field(default_factory=list, description="Wrapper keys to unwrap first (e.g. state_dict).")
    keys: str = Field(description="Regular expression every tensor name must match in full.")
    tensors: int | None = Field(default=None, ge=1, description="Exact number of tensors, when the layout fixes it.")


class ComponentEntry(BaseModel):
    """One weights component (a diffusers folder, an adapter file, an ONNX pack...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Stable id; also the folder name under the weights root."
    )
    role: Role
    family: Literal["sdxl", "ip-adapter", "instantid", "clip-vision", "insightface", "wan", "stand-in", "speed-lora"]
    layout: Literal["diffusers", "transformers", "single-file", "onnx-pack"] = Field(
        description="How the files are organised on disk (what loads them)."
    )
    source: Source
    files: list[str] = Field(min_length=1, description="Paths or glob patterns (relative) that must be present.")
    root: str = Field(default="", description="Sub-folder that is the loadable root (e.g. models/image_encoder).")
    variant: str | None = Field(default=None, description="diffusers `variant` for from_pretrained (e.g. fp16).")
    license: License
    size_gb: float = Field(ge=0, description="Approximate download size.")
    vram_gb: float = Field(ge=0, description="Approximate VRAM to run it without offload (fp16/bf16).")
    description: str = ""
    weight_name: str | None = Field(
        default=None,
        description="Single-file adapters: the file a diffusers loader reads (`load_ip_adapter(weight_name=...)`).",
    )
    encoder: EncoderDecl | None = Field(
        default=None, description="Face-analysis packs: the identity encoder they provide (onnx-pack layout only)."
    )
    convert: ConvertSpec | None = Field(
        default=None, description="Convert this publisher file once; the lock then holds the converted file instead."
    )
    accepts_loras_of: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Base components whose character LoRAs load here unchanged: this model's main blocks are theirs "
        "(Wan2.1-VACE-14B is Wan2.1-T2V-14B with VACE blocks added, its base frozen), so a LoRA trained on one of them "
        "fits (the VACE blocks stay as released).",
    )

    @model_validator(mode="after")
    def _encoder_files_listed(self) -> ComponentEntry:
        if self.convert is not None and self.convert.source not in self.files:
            raise ValueError(f"convert source '{self.convert.source}' is not among the component's files")
        if self.weight_name is not None and self.weight_name not in self.locked_files:
            raise ValueError(f"weight_name '{self.weight_name}' is not among the component's files")
        if self.encoder is not None:
            if self.layout != "onnx-pack":
                raise ValueError("only onnx-pack components can declare an encoder")
            if self.encoder.recognition_file not in self.files:
                raise ValueError(f"encoder file '{self.encoder.recognition_file}' is not among the component's files")
        return self

    @property
    def is_generated(self) -> bool:
        return isinstance(self.source, GeneratedSource)

    @property
    def locked_files(self) -> list[str]:
        """The file patterns the lock records and loads read: `files`, with a converted file in place of its
        source (fetch and import look for `files`)."""
        if self.convert is None:
            return list(self.files)
        return [self.convert.target if f == self.convert.source else f for f in self.files]


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    components: list[ComponentEntry]

    @model_validator(mode="after")
    def _unique_ids(self) -> Manifest:
        seen: set[str] = set()
        encoders: set[str] = set()
        for c in self.components:
            if c.id in seen:
                raise ValueError(f"duplicate component id '{c.id}'")
            seen.add(c.id)
            if c.encoder is not None:
                if c.encoder.id in encoders:
                    raise ValueError(f"encoder id '{c.encoder.id}' is declared by two components")
                encoders.add(c.encoder.id)
        return self

    def get(self, component_id: str) -> ComponentEntry:
        for c in self.components:
            if c.id == component_id:
                return c
        known = ", ".join(c.id for c in self.components)
        raise ModelNotFound(f"unknown weights component '{component_id}': known ids are {known}")

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.components]


def load_manifest(path: Path) -> Manifest:
    """Read and validate the manifest; errors name the file and the offending key."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"weights manifest not found at {path}: set FLX_MANIFEST_PATH or run from the repo"
        ) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: key '{loc}': {err['msg']}") from None
