"""`TrainSpec`: everything a character-LoRA training run is told, validated in one place.

Every bound lives on its field, so the CLI's error line (`engine._core.validation.one_line`) can never disagree with
the check. The spec is frozen and JSON-serialisable: a checkpoint records it, and a resume refuses a spec that
differs in anything but `steps` (the run would no longer be the one the checkpoint belongs to).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine._core.errors import InputError

MAX_STEPS = 200_000
MAX_VALIDATION_PROMPTS = 8
DEFAULT_TRIGGER = "ohwx"  # a rare CLIP token (DreamBooth practice): the LoRA binds the identity to it

# Fields a resumed run may change: everything else must match the checkpoint's spec exactly.
RESUMABLE_CHANGES = frozenset({"steps"})


class TrainSpec(BaseModel):
    """What to train and how. Defaults are a sane SDXL identity-LoRA run (rank 16, 1500 steps, lr 1e-4).

    Example:
        >>> TrainSpec(steps=800, rank=8, validation_prompts=["portrait photo of ohwx person in a park"])
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    preset: str = Field(
        default="stills-sdxl",
        min_length=1,
        max_length=120,
        description="Still preset whose base model is trained (its SDXL UNet); a video preset trains the Wan "
        "transformer.",
    )
    source: str = Field(
        default="pack",
        min_length=1,
        max_length=4096,
        description="Training images: 'pack' (the character's pack stills), 'refs' (its reference head crops) or a "
        "folder of images (with optional <image>.txt captions).",
    )
    steps: int = Field(default=1500, ge=1, le=MAX_STEPS, description="Optimizer steps.")
    rank: int = Field(default=16, ge=1, le=256, description="LoRA rank r.")
    alpha: float | None = Field(
        default=None, gt=0.0, le=1024.0, description="LoRA alpha (scale alpha/r); None = rank (scale 1)."
    )
    lr: float = Field(default=1e-4, gt=0.0, le=1.0, description="AdamW learning rate.")
    lr_warmup_steps: int = Field(default=0, ge=0, le=MAX_STEPS, description="Linear warm-up steps, then constant.")
    weight_decay: float = Field(default=1e-2, ge=0.0, le=1.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0.0, le=1000.0, description="Gradient clipping norm.")
    resolution: int | None = Field(
        default=None, ge=32, le=2048, description="Square training side in pixels (multiple of 8); None = preset's."
    )
    train_text_encoder: bool = Field(default=False, description="Also train LoRAs on both SDXL text encoders.")
    batch_size: int = Field(default=1, ge=1, le=64, description="Images per micro-batch.")
    grad_accum: int = Field(default=1, ge=1, le=128, description="Micro-batches per optimizer step.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seeds LoRA init, data order, noise, augmentation.")
    checkpoint_every: int = Field(default=250, ge=1, le=MAX_STEPS, description="Save a resumable checkpoint every K.")
    keep_checkpoints: int = Field(default=2, ge=1, le=100, description="How many recent checkpoints to keep.")
    validate_every: int = Field(
        default=250, ge=1, le=MAX_STEPS, description="Render and score the validation prompts every V steps."
    )
    validation_prompts: tuple[str, ...] = Field(
        default=(),
        max_length=MAX_VALIDATION_PROMPTS,
        description="Prompts rendered at each validation (empty = one portrait prompt with the trigger).",
    )
    validation_steps: int = Field(default=20, ge=1, le=200, description="Denoising steps per validation render.")
    validation_seed: int = Field(default=1234, ge=0, le=2**31 - 1, description="Seed of every validation render.")
    trigger: str = Field(
        default=DEFAULT_TRIGGER,
        pattern=r"^[a-z][a-z0-9]{1,23}$",
        description="Rare token the identity is bound to; write it in prompts to call the character.",
    )
    class_word: str = Field(
        default="person", pattern=r"^[a-z][a-z -]{0,38}[a-z]$", description="DreamBooth class noun of the captions."
    )
    flip: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Horizontal-flip augmentation; auto = off when a profile anchor detail is on one side.",
    )
    crop_jitter: float = Field(
        default=0.1, ge=0.0, le=0.5, description="Random crop shift around the face, as a fraction of the side."
    )
    augment_variants: int = Field(
        default=4, ge=1, le=16, description="Crops precomputed (and cached) per image; flipped copies add as many."
    )
    min_images: int = Field(default=3, ge=1, le=1000, description="Refuse to train on fewer usable images.")
    prior_dir: Path | None = Field(
        default=None, description="Folder of class images for prior preservation (captioned 'photo of a <class>')."
    )
    prior_weight: float = Field(default=1.0, ge=0.0, le=10.0, description="Weight of the prior-preservation loss.")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        default="auto", description="auto = bf16 (or fp16) on CUDA, fp32 on CPU."
    )
    gradient_checkpointing: bool | None = Field(
        default=None, description="Recompute activations in backward (less memory); None = on for CUDA."
    )
    use_8bit_adam: Literal["auto", "on", "off"] = Field(
        default="auto", description="bitsandbytes AdamW8bit; auto = where bitsandbytes imports and CUDA is used."
    )

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, v: int | None) -> int | None:
        if v is not None and v % 8:
            raise ValueError(f"resolution {v} must be a multiple of 8")
        return v

    @field_validator("validation_prompts")
    @classmethod
    def _prompts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from engine._core.text import check_text

        return tuple(check_text(p, "validation prompt", max_len=500, multiline=False) for p in v)

    @model_validator(mode="after")
    def _cross(self):
        if self.lr_warmup_steps > self.steps:
            raise ValueError(f"lr_warmup_steps {self.lr_warmup_steps} exceeds steps {self.steps}")
        if self.prior_dir is None and "prior_weight" in self.model_fields_set:
            raise ValueError("prior_weight is set but prior_dir is not: give the folder of class images")
        return self

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    def prompts(self) -> tuple[str, ...]:
        """The validation prompts, or the default portrait prompt with the trigger."""
        return self.validation_prompts or (f"portrait photo of {self.trigger} {self.class_word}, looking at camera",)

    def resume_key(self) -> dict:
        """The fields a checkpoint must agree on to be resumed by this spec."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in RESUMABLE_CHANGES}


def spec_from_values(flags: dict[str, str] | None = None, **values) -> TrainSpec:
    """A `TrainSpec` from keyword values (None = default), refused as one `InputError` line naming the CLI flag.

    `flags` maps field names to the flags that set them (`{"rank": "--rank"}`).
    """
    from engine._core.validation import one_line

    try:
        return TrainSpec(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        raise InputError(one_line(TrainSpec, e, flags)) from None


__all__ = ["DEFAULT_TRIGGER", "MAX_VALIDATION_PROMPTS", "RESUMABLE_CHANGES", "TrainSpec", "spec_from_values"]
