"""Generation presets: `configs/presets/*.yaml` validated into frozen pydantic models.

A preset names the pipeline kind, the manifest ids of its weights components and the default
generation parameters. The YAML files are the only place presets are defined; this module is
their one schema. `task` discriminates stills from video.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from engine._core.errors import ConfigError

StillPipeline = Literal["sdxl", "sdxl-faceid", "sdxl-instantid"]
VideoPipeline = Literal["wan-i2v", "wan-ti2v", "wan-t2v", "wan-vace", "wan-flf2v"]
# Schedulers a still preset may pick; "default" keeps the one shipped with the base model.
StillScheduler = Literal["default", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc"]
VideoScheduler = Literal["default", "unipc"]

# Which component slots each pipeline kind needs (besides `base`).
REQUIRED_COMPONENTS: dict[str, tuple[str, ...]] = {
    "sdxl": (),
    "sdxl-faceid": ("identity_adapter", "image_encoder", "face_analysis"),
    "sdxl-instantid": ("identity_adapter", "controlnet", "face_analysis"),
    "wan-i2v": (),
    "wan-ti2v": (),
    "wan-t2v": (),
    "wan-vace": (),
    "wan-flf2v": (),
}
# The face pack each identity method was trained with, by manifest role: IP-Adapter-FaceID on buffalo_l's
# `normed_embedding`, InstantID on antelopev2's `embedding`. Another pack's vectors would condition on noise.
FACE_PACK_ROLE: dict[str, str] = {
    "sdxl-faceid": "face-analysis-buffalo_l",
    "sdxl-instantid": "face-analysis-antelopev2",
}
# Pixel sides must be multiples of this (VAE downsampling x transformer patch size).
SIDE_MULTIPLE: dict[str, int] = {
    "sdxl": 8,
    "sdxl-faceid": 8,
    "sdxl-instantid": 8,
    "wan-i2v": 16,
    "wan-t2v": 16,
    "wan-ti2v": 32,
    "wan-vace": 16,
    "wan-flf2v": 16,
}

_ID = r"^[a-z0-9][a-z0-9._-]*$"


class PresetComponents(BaseModel):
    """Manifest ids of the weights a preset uses (see weights_manifest.json)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str = Field(pattern=_ID, description="Base model: an SDXL or Wan diffusers folder.")
    identity_adapter: str | None = Field(
        default=None, pattern=_ID, description="Identity adapter file (IP-Adapter FaceID or InstantID ip-adapter)."
    )
    image_encoder: str | None = Field(default=None, pattern=_ID, description="CLIP image encoder (FaceID-Plus).")
    controlnet: str | None = Field(default=None, pattern=_ID, description="ControlNet (InstantID IdentityNet).")
    face_analysis: str | None = Field(
        default=None, pattern=_ID, description="Face embedding model pack used for identity conditioning."
    )
    reference: str | None = Field(
        default=None,
        pattern=_ID,
        description="Stand-In checkpoint for `transformer` (Wan 2.2: the high-noise expert); see `reference`.",
    )
    reference_2: str | None = Field(
        default=None, pattern=_ID, description="Stand-In checkpoint for `transformer_2` (Wan 2.2's low-noise expert)."
    )
    speed_lora: str | None = Field(
        default=None,
        pattern=_ID,
        description="Step-distilled LoRA (lightx2v, Wan2.2-Lightning) for `transformer` (Wan 2.2: the high-noise "
        "expert); video presets only. Pair it with `scheduler: unipc`, `flow_shift: 5`, `steps: 4`, `guidance: 1`.",
    )
    speed_lora_2: str | None = Field(
        default=None, pattern=_ID, description="Step-distilled LoRA for `transformer_2` (Wan 2.2's low-noise expert)."
    )

    def ids(self) -> dict[str, str]:
        """{slot: manifest id} of the slots that are set."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class _PresetBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_ID, description="Preset name; equals the YAML file name without `.yaml`.")
    description: str = Field(default="", max_length=500, description="One line for `flx presets`.")
    components: PresetComponents = Field(description="Weights components by slot.")
    width: int = Field(ge=16, le=4096, description="Output width in pixels.")
    height: int = Field(ge=16, le=4096, description="Output height in pixels.")
    steps: int = Field(ge=1, le=200, description="Denoising steps.")
    guidance: float = Field(ge=0.0, le=30.0, description="Classifier-free guidance scale (1 disables CFG).")
    negative_prompt: str = Field(default="", max_length=2000, description="Default negative prompt.")
    vram_gb: float = Field(
        ge=0.0, le=1024.0, description="GPU memory (GiB) to run fully on the GPU in bf16/fp16 without offload."
    )

    @model_validator(mode="after")
    def _check_sides_and_slots(self):
        kind = self.pipeline  # type: ignore[attr-defined]
        m = SIDE_MULTIPLE[kind]
        for side in ("width", "height"):
            v = getattr(self, side)
            if v % m:
                raise ValueError(f"{side} {v} must be a multiple of {m} for pipeline '{kind}'")
        missing = [s for s in REQUIRED_COMPONENTS[kind] if getattr(self.components, s) is None]
        if missing:
            raise ValueError(f"pipeline '{kind}' needs components: {', '.join(missing)}")
        return self


class IdentityDefaults(BaseModel):
    """Default strengths of identity conditioning (identity presets only; every one can be overridden per shot).

    The effective adapter scales are these times the shot's `identity_strength` (0 = exactly the plain pipeline).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float = Field(
        0.8, ge=0.0, le=2.0, description="IP-Adapter scale of the identity tokens (FaceID, InstantID)."
    )
    structure_scale: float = Field(
        1.0,
        ge=0.0,
        le=2.0,
        description="FaceID-Plus-v2: weight of the CLIP face-structure shortcut (`shortcut_scale`).",
    )
    lora_scale: float = Field(1.0, ge=0.0, le=2.0, description="FaceID: weight of the adapter's companion LoRA.")
    controlnet_scale: float = Field(
        0.8, ge=0.0, le=2.0, description="InstantID: IdentityNet (ControlNet on the face keypoints) scale."
    )
    start: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of the steps at which identity injection starts.")
    end: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of the steps at which it stops.")

    @model_validator(mode="after")
    def _window(self):
        if self.start >= self.end:
            raise ValueError(f"identity window start {self.start} must be below its end {self.end}")
        return self


IDENTITY_PIPELINES = ("sdxl-faceid", "sdxl-instantid")
# Wan kinds with published Stand-In weights (T2V 14B, Wan 2.2 T2V A14B; VACE 14B with the 2.1 checkpoint). On the
# others (I2V, TI2V-5B) the reference attention runs only untrained, as an explicit experimental option.
REFERENCE_PIPELINES = ("wan-t2v", "wan-vace")
TWO_EXPERT_PIPELINES = ("wan-t2v", "wan-i2v")  # WanPipeline / WanImageToVideoPipeline with `transformer_2`


class ReferenceDefaults(BaseModel):
    """Stand-In reference attention (video presets). The preset says whether trained weights exist for its model.

    `strength` 0 renders exactly the stock model; in (0, 1] it is a logit bias `log(strength * weight)` on the
    reference keys (1 = Stand-In as published). Too strong a reference pulls every shot towards a front-facing
    headshot: lower strength, fewer blocks or a shorter step window give the prompt more room.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["stand-in"] = Field("stand-in", description="The reference-attention method.")
    trained: bool = Field(
        description="True: `components.reference` (and `reference_2` for two experts) were trained for this base "
        "model. False: none exist; the attention can then run only untrained, as an explicit experimental option."
    )
    strength: float = Field(1.0, ge=0.0, le=1.0, description="0 = stock exactly; 1 = Stand-In as published.")
    blocks: list[Annotated[int, Field(ge=0, le=255)]] | None = Field(
        default=None,
        min_length=1,
        description="Transformer blocks whose video queries see the reference; all if unset.",
    )
    start: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of the steps at which the reference starts.")
    end: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of the steps at which it stops.")

    @model_validator(mode="after")
    def _window(self):
        if self.start >= self.end:
            raise ValueError(f"reference window start {self.start} must be below its end {self.end}")
        return self


class StillPreset(_PresetBase):
    """An SDXL still-image preset."""

    task: Literal["still"] = Field(description="Discriminator: a still image.")
    pipeline: StillPipeline = Field(description="Pipeline kind.")
    scheduler: StillScheduler = Field(default="default", description="Sampler; `default` keeps the model's own.")
    identity: IdentityDefaults | None = Field(
        default=None, description="Identity presets: default conditioning strengths (defaults apply when omitted)."
    )

    @model_validator(mode="after")
    def _no_speed_lora(self):
        if self.components.speed_lora or self.components.speed_lora_2:
            raise ValueError("speed LoRAs are for Wan video presets: remove components.speed_lora")
        return self

    @model_validator(mode="after")
    def _identity_only_where_applied(self):
        if self.identity is not None and self.pipeline not in IDENTITY_PIPELINES:
            raise ValueError(f"identity settings do nothing in pipeline '{self.pipeline}': remove them")
        if self.identity is None and self.pipeline in IDENTITY_PIPELINES:
            object.__setattr__(self, "identity", IdentityDefaults())
        return self


class VideoPreset(_PresetBase):
    """A Wan video preset."""

    task: Literal["video"] = Field(description="Discriminator: a video clip.")
    pipeline: VideoPipeline = Field(description="Pipeline kind.")
    scheduler: VideoScheduler = Field(default="default", description="Sampler; `default` keeps the model's own.")
    num_frames: int = Field(ge=5, le=257, description="Frames to generate; Wan needs 4k+1.")
    fps: int = Field(default=24, ge=1, le=60, description="Frame rate of the written MP4.")
    native_fps: int | None = Field(
        default=None,
        ge=1,
        le=60,
        description="Frame rate the model was trained at (Wan 2.1/2.2 14B: 16; TI2V-5B: 24). Clips are generated at "
        "it and brought to `fps` by motion-compensated interpolation; default: `fps` (no interpolation).",
    )
    flow_shift: float | None = Field(
        default=None, ge=0.5, le=20.0, description="Override the scheduler's flow shift (3 for 480p, 5 for 720p)."
    )
    max_sequence_length: int = Field(
        default=512, ge=64, le=512, description="Text tokens; the I2V image cross-attention assumes 512."
    )
    boundary_ratio: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Two-expert models (Wan 2.2 A14B): `transformer` runs while t >= ratio x 1000, then "
        "`transformer_2` (0.875 for T2V, 0.9 for I2V); unset keeps the model's own.",
    )
    guidance_2: float | None = Field(
        default=None, ge=0.0, le=30.0, description="Guidance of the low-noise expert (`guidance_scale_2`)."
    )
    reference: ReferenceDefaults | None = Field(
        default=None, description="Stand-In reference attention: whether it is trained for this model, defaults."
    )
    speed_lora_scale: float = Field(
        default=1.0,
        ge=0.0,
        le=2.0,
        description="Weight of `components.speed_lora` (and `speed_lora_2`); 0 renders exactly the base model.",
    )

    @model_validator(mode="after")
    def _check_speed_lora(self):
        comps = self.components
        if comps.speed_lora_2 is not None and comps.speed_lora is None:
            raise ValueError("components.speed_lora_2 is the low-noise expert's LoRA: set components.speed_lora too")
        if comps.speed_lora is not None and (comps.speed_lora_2 is None) != (self.boundary_ratio is None):
            raise ValueError("two experts (boundary_ratio) need components.speed_lora_2, one each; one needs none")
        if "speed_lora_scale" in self.model_fields_set and comps.speed_lora is None:
            raise ValueError("speed_lora_scale does nothing without components.speed_lora: remove it")
        return self

    @model_validator(mode="after")
    def _check_experts_and_reference(self):
        if self.boundary_ratio is not None and self.pipeline not in TWO_EXPERT_PIPELINES:
            raise ValueError(f"boundary_ratio needs a two-expert pipeline ({', '.join(TWO_EXPERT_PIPELINES)})")
        if self.guidance_2 is not None and self.boundary_ratio is None:
            raise ValueError("guidance_2 is the low-noise expert's guidance: set boundary_ratio too")
        comps = self.components
        trained = self.reference is not None and self.reference.trained
        if (comps.reference or comps.reference_2) and not trained:
            raise ValueError("components.reference names Stand-In weights: add `reference: {trained: true}`")
        if trained:
            if self.pipeline not in REFERENCE_PIPELINES:
                raise ValueError(
                    f"Stand-In weights exist only for {', '.join(REFERENCE_PIPELINES)} (set trained: false)"
                )
            if comps.reference is None:
                raise ValueError("reference.trained needs components.reference (the Stand-In checkpoint)")
            if (comps.reference_2 is None) != (self.boundary_ratio is None):
                raise ValueError("two experts (boundary_ratio) need components.reference_2, one each; one needs none")
        return self

    @model_validator(mode="after")
    def _check_frames(self):
        if (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames {self.num_frames} must be 4k+1 (e.g. 9, 49, 81, 121)")
        if self.pipeline == "wan-i2v" and self.max_sequence_length != 512:
            # WanAttnProcessor splits image tokens off as "all but the last 512" context tokens.
            raise ValueError("max_sequence_length must be 512 for wan-i2v (its image cross-attention assumes it)")
        return self


Preset = Annotated[StillPreset | VideoPreset, Field(discriminator="task")]
_PRESET_ADAPTER: TypeAdapter[StillPreset | VideoPreset] = TypeAdapter(Preset)


def list_presets(presets_dir: Path) -> list[str]:
    """Names of the preset files in `presets_dir`, sorted."""
    d = Path(presets_dir)
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _one_line_error(path: Path, err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"] if p not in ("still", "video"))
    msg = e["msg"].replace("Value error, ", "")
    got = e.get("input")
    got_txt = f" (got {got!r})" if not isinstance(got, dict) and e["type"] != "missing" else ""
    return f"{path}: key '{loc or '<root>'}': {msg}{got_txt}"


def parse_preset(data: object, source: Path | str = "<preset>") -> StillPreset | VideoPreset:
    """Validate an already-parsed mapping; errors are one-line `ConfigError`s naming `source` and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a preset must be a YAML mapping of keys to values")
    if data.get("task") not in ("still", "video"):
        raise ConfigError(f"{source}: key 'task': must be 'still' or 'video' (got {data.get('task')!r})")
    try:
        return _PRESET_ADAPTER.validate_python(data)
    except ValidationError as e:
        raise ConfigError(_one_line_error(Path(str(source)), e)) from None


def preset_file(name_or_path: str | Path, presets_dir: Path) -> Path:
    """The YAML file a preset name or path refers to (`ConfigError` when there is none)."""
    s = str(name_or_path)
    path = Path(s)
    if not (s.endswith((".yaml", ".yml")) or path.is_file()):
        path = Path(presets_dir) / f"{s}.yaml"
        if not path.is_file():
            names = ", ".join(list_presets(presets_dir)) or f"none found in {presets_dir}"
            raise ConfigError(f"unknown preset '{s}': choose one of {names}")
    elif not path.is_file():
        raise ConfigError(f"preset file not found: {path}")
    return path


def load_preset(name_or_path: str | Path, presets_dir: Path) -> StillPreset | VideoPreset:
    """Load a preset by name (from `presets_dir`) or by path to a YAML file.

    Args:
        name_or_path (`str` or `Path`): `stills-faceid-sdxl`, or `./my-preset.yaml`.
        presets_dir (`Path`): folder of the bundled presets (`EngineSettings.presets_dir`).

    Raises:
        `ConfigError`: unknown name (the message lists the available ones) or an invalid file.
    """
    from engine._core.yaml_io import read_document

    path = preset_file(name_or_path, presets_dir)
    preset = parse_preset(read_document(path, "preset"), path)
    if path.parent.resolve() == Path(presets_dir).resolve() and preset.name != path.stem:
        raise ConfigError(f"{path}: key 'name': must equal the file name '{path.stem}' (got {preset.name!r})")
    return preset


def check_components(preset: StillPreset | VideoPreset, manifest) -> None:
    """Raise `ConfigError` when a component id of the preset is not in the weights manifest, or when its face pack
    is not one the method was trained with."""
    known = set(manifest.ids)
    for slot, cid in preset.components.ids().items():
        if cid not in known:
            raise ConfigError(
                f"preset '{preset.name}': key 'components.{slot}': unknown weights id '{cid}' "
                f"(see weights_manifest.json)"
            )
    for slot in ("speed_lora", "speed_lora_2"):
        cid = getattr(preset.components, slot, None)
        if cid is not None and manifest.get(cid).family != "speed-lora":
            raise ConfigError(
                f"preset '{preset.name}': key 'components.{slot}': '{cid}' is not a speed LoRA: name a speed-lora "
                "component of weights_manifest.json"
            )
    for slot in ("reference", "reference_2"):
        cid = getattr(preset.components, slot, None)
        if cid is not None and manifest.get(cid).family != "stand-in":
            raise ConfigError(
                f"preset '{preset.name}': key 'components.{slot}': '{cid}' is not a Stand-In checkpoint: name a "
                "stand-in component of weights_manifest.json"
            )
    face = preset.components.face_analysis
    if face is not None:
        entry = manifest.get(face)
        want = FACE_PACK_ROLE.get(preset.pipeline)
        if entry.encoder is None or (want is not None and entry.role.value != want):
            raise ConfigError(
                f"preset '{preset.name}': key 'components.face_analysis': '{face}' is a {entry.role.value} "
                f"component, but pipeline '{preset.pipeline}' was trained on {want or 'a face-analysis pack'}: "
                f"name a {want or 'face-analysis'} component"
            )


__all__ = [
    "IDENTITY_PIPELINES",
    "REFERENCE_PIPELINES",
    "IdentityDefaults",
    "ReferenceDefaults",
    "Preset",
    "PresetComponents",
    "StillPreset",
    "VideoPreset",
    "check_components",
    "list_presets",
    "load_preset",
    "parse_preset",
    "preset_file",
]
