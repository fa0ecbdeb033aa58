"""The Wan objective of the character-LoRA loop (`trainer._train`): a Wan video transformer (text-to-video presets).

`train_character_lora` dispatches video presets here (`train_wan_lora` is the same call, refusing still presets),
with the same contract (arguments, `TrainResult`, `info` keys, checkpoints, resume rules, validation by likeness,
best-checkpoint selection). What differs, and lives here:

- Objective: Wan's flow matching on the character's stills as 1-frame clips. Each crop is VAE-encoded once as a
  (3, 1, H, W) clip (the posterior mean, normalised with the VAE config's `latents_mean` / `latents_std` as
  diffusers' Wan pipelines do) and each caption once by UMT5 (`pipe.encode_prompt`, the preset's
  `max_sequence_length`). A step draws u ~ U(0, 1) and noise from the run's seeded CPU generator, shifts
  sigma = s*u / (1 + (s-1)*u) with the scheduler's `flow_shift` s (the sigmas the preset samples at), mixes
  x_t = (1 - sigma) * x0 + sigma * eps and regresses the transformer's output at timestep sigma*1000 onto the
  velocity eps - x0 (MSE).
- The LoRA is a peft adapter on the transformer's attention projections (`to_q`, `to_k`, `to_v`, `to_out.0` of
  `attn1` self-attention and `attn2` cross-attention). peft wraps the layers themselves, so the LoRA acts on every
  forward of that transformer: the video stream and Stand-In's reference stream alike (a Stand-In preset trains
  like its plain base: no reference is injected during training or validation).
- Wan 2.2 two-expert presets (`boundary_ratio`): only the low-noise expert (`transformer_2`) trains, on sigmas
  below the boundary (the only sigmas it denoises at render time); the high-noise expert, which lays out
  composition and motion, stays as released. `info["experts"] = ["transformer_2"]` tells
  `engine.pipelines.character_lora.load_character_lora` to load the file into that expert.
- Validation renders each prompt as a short clip (`validation.render_validation` with `VALIDATION_FRAMES` frames at
  the training side, seeded, `validation_steps` steps, the preset's guidance) scored by `validation.clip_likeness`.
- Export: `WanPipeline.save_lora_weights` (`export.export_diffusers` with the `transformer` slot). No kohya file:
  diffusers has no Wan -> kohya converter and the kohya format is an SD/SDXL convention; `paths` has no
  `kohya_file`.

Refused, one line each, before any weights are touched: image-conditioned presets (I2V, FLF2V, TI2V, VACE: their
transformers take conditioning channels or control streams a still-image objective does not exercise), presets
with a speed LoRA (a step-distilled adapter already in the transformer; train on the preset without it, same base),
and a training side that is not a multiple of 16 (VAE stride 8 x patch 2).
"""

from __future__ import annotations

import os

from engine._core.errors import ConfigError

from .export import UNET_TARGETS
from .spec import TrainSpec
from .trainer import TrainResult, _crops, _Loss, _Models, train_character_lora

TRAINABLE_VIDEO_PIPELINES = ("wan-t2v",)
WAN_TARGETS = UNET_TARGETS  # WanAttention names its projections like diffusers' Attention: to_q/to_k/to_v/to_out.0
VALIDATION_FRAMES = 5  # 4k+1: the shortest clip a Wan preset renders
SIDE_MULTIPLE = 16  # VAE stride 8 x transformer patch 2


def trained_expert(pipe) -> str:
    """The transformer a character LoRA trains: `transformer_2` (low-noise expert) with two experts, else
    `transformer`."""
    two = getattr(pipe.config, "boundary_ratio", None) is not None and getattr(pipe, "transformer_2", None)
    return "transformer_2" if two else "transformer"


def check_trainable(preset) -> None:
    """Refuse, in one line, a video preset the Wan trainer cannot train (before any weights are read)."""
    if preset.pipeline not in TRAINABLE_VIDEO_PIPELINES:
        raise ConfigError(
            f"preset '{preset.name}' ({preset.pipeline}) conditions the transformer on images or control frames, "
            "which Wan LoRA training does not model: train on a text-to-video preset (wan-t2v) on the same base"
        )
    comps = preset.components
    if getattr(comps, "speed_lora", None) is not None:
        raise ConfigError(
            f"preset '{preset.name}' carries a step-distilled speed LoRA ({comps.speed_lora}): train on the same "
            "base's preset without one (the character LoRA then loads into this one)"
        )


def encode_clip_latents(vae, pixels, device):
    """(N, C, 1, h, w) normalised latents of (N, 3, H, W) stills in [-1, 1], each a 1-frame clip: the posterior
    mean, `(z - latents_mean) / latents_std` as diffusers' Wan pipelines normalise."""
    import torch

    dtype = next(vae.parameters()).dtype
    z_dim = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z_dim, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z_dim, 1, 1, 1)
    out = []
    with torch.no_grad():
        for chunk in pixels.split(8):
            x = chunk.unsqueeze(2).to(device, dtype)
            lat = vae.encode(x).latent_dist.mean.float().cpu()
            out.append((lat - mean) / std)
    return torch.cat(out)


class _WanCache:
    """Cached latents per sample and UMT5 embeddings per caption."""

    def __init__(self, pipe, images, samples, resolution: int, device: str, max_sequence_length: int):
        import torch

        pixels, self.captions, self.caption_of = _crops(images, samples, resolution)
        self.latents = encode_clip_latents(pipe.vae, pixels, device)
        with torch.no_grad():
            embeds, _ = pipe.encode_prompt(
                prompt=self.captions,
                do_classifier_free_guidance=False,
                num_videos_per_prompt=1,
                max_sequence_length=max_sequence_length,
                device=device,
            )
        self.embeds = embeds.detach()

    def __len__(self) -> int:
        return self.latents.shape[0]


def flow_shift_of(scheduler) -> float:
    """The scheduler's flow shift (`flow_shift` for UniPC / DPM flow schedulers, `shift` for FlowMatchEuler)."""
    cfg = scheduler.config
    value = cfg.get("flow_shift") if cfg.get("flow_shift") is not None else cfg.get("shift")
    return float(value) if value is not None else 1.0


def shift_sigmas(u, shift: float):
    """sigma = s*u / (1 + (s-1)*u): the flow shift diffusers' Wan schedulers apply to their sigmas."""
    return shift * u / (1 + (shift - 1) * u)


class _WanStep(_Loss):
    """One micro-batch's flow-matching loss, noise and sigmas from the run's seeded generator."""

    def __init__(self, pipe, spec: TrainSpec, cache: _WanCache, prior: _WanCache | None, expert: str, accelerator):
        super().__init__(spec, cache, prior, accelerator)
        self.model = getattr(pipe, expert)
        self.device = self.model.device
        self.dtype = self.model.dtype
        self.shift = flow_shift_of(pipe.scheduler)
        self.timesteps = float(pipe.scheduler.config.get("num_train_timesteps", 1000))
        boundary = getattr(pipe.config, "boundary_ratio", None) if expert == "transformer_2" else None
        # low-noise expert: u below the shifted boundary, so sigma < boundary_ratio (the range it denoises)
        self.u_max = 1.0 if boundary is None else boundary / (self.shift - (self.shift - 1) * boundary)

    def _mse(self, cache: _WanCache, idx):
        import torch
        import torch.nn.functional as F

        x0 = cache.latents[idx].to(self.device, torch.float32)
        noise = torch.randn(x0.shape, generator=self.generator, dtype=torch.float32).to(self.device)
        u = torch.rand((len(idx),), generator=self.generator, dtype=torch.float32) * self.u_max
        sigma = shift_sigmas(u, self.shift).to(self.device)
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        target = noise - x0
        embeds = cache.embeds[torch.tensor([cache.caption_of[i] for i in idx.tolist()])].to(self.device, self.dtype)
        with self.accelerator.autocast():
            pred = self.model(
                hidden_states=noisy.to(self.dtype),
                timestep=sigma * self.timesteps,
                encoder_hidden_states=embeds,
                return_dict=False,
            )[0]
        return F.mse_loss(pred.float(), target)


class _Wan:
    """Wan's part of a run, with the members `trainer._train` uses (see `trainer._SDXL`): the trained expert gets
    the LoRA, the flow-matching loss, clips scored by likeness, the diffusers export into the `transformer` slot."""

    target, slot, kohya, title = "wan-transformer", "transformer", False, "Wan LoRA training"

    def __init__(self, loaded):
        self.loaded, self.pipe = loaded, loaded.pipe
        self.expert = None  # chosen by `models`, once the pipeline may be touched

    @property
    def experts(self) -> list[str]:
        return [self.expert]

    @property
    def checkpoint_meta(self) -> dict:
        return {"target": self.target, "expert": self.expert}

    def check(self, spec: TrainSpec, resolution: int) -> None:
        if spec.train_text_encoder:
            raise ConfigError("train_text_encoder applies to SDXL: Wan LoRA training adapts the transformer only")
        if resolution % SIDE_MULTIPLE:
            raise ConfigError(
                f"Wan trains at sides that are multiples of {SIDE_MULTIPLE}: --resolution {resolution} is not (try "
                f"{max(SIDE_MULTIPLE, resolution // SIDE_MULTIPLE * SIDE_MULTIPLE)})"
            )

    def models(self, spec: TrainSpec) -> _Models:
        self.expert = trained_expert(self.pipe)
        return _Models({self.expert: getattr(self.pipe, self.expert)}, WAN_TARGETS, "expert")

    def cache(self, images, samples, resolution: int, device: str, spec: TrainSpec) -> _WanCache:
        return _WanCache(self.pipe, images, samples, resolution, device, self.loaded.preset.max_sequence_length)

    def step(self, spec: TrainSpec, cache, prior, resolution: int, accelerator) -> _WanStep:
        return _WanStep(self.pipe, spec, cache, prior, self.expert, accelerator)

    def render(self, spec: TrainSpec, resolution: int):
        from .validation import render_validation

        preset = self.loaded.preset
        two = {"guidance_scale_2": preset.guidance_2} if getattr(preset, "guidance_2", None) is not None else {}
        return render_validation(
            self.pipe, spec.prompts(), resolution=resolution, steps=spec.validation_steps, seed=spec.validation_seed,
            guidance=preset.guidance, num_frames=VALIDATION_FRAMES, max_sequence_length=preset.max_sequence_length,
            **two,
        )  # fmt: skip

    def likeness(self, clips, reference, analyzer):
        from .validation import clip_likeness

        return clip_likeness(clips, reference, analyzer)

    def pipeline_cls(self):
        from diffusers import WanPipeline

        return WanPipeline


def train_wan_lora(loaded, spec: TrainSpec, out_dir: str | os.PathLike, **kwargs) -> TrainResult:
    """Train an identity LoRA of `character` on a Wan text-to-video preset's transformer and export it to `out_dir`.

    `train_character_lora` on a video preset (see there for the keyword arguments, result and checkpoint/resume
    contract), refusing still presets; `info["target"]` is `"wan-transformer"`, `info["experts"]` names the trained
    transformer, and `paths` has no `kohya_file`.

    Raises:
        `ConfigError`: a preset that is not Wan text-to-video, one with a speed LoRA, a training side that is not a
            multiple of 16, a checkpoint made with other settings, an unusable precision/optimizer choice.
        `InputError`: too few images show the character (see `dataset.build_training_set`).
        `OutputError`: a checkpoint or export cannot be written (the previous checkpoint is kept).

    Examples:
        ```py
        >>> loaded = load_pipeline(load_preset("video-wan21-t2v-1.3b", presets_dir), store, plan)
        >>> result = train_wan_lora(loaded, TrainSpec(preset="video-wan21-t2v-1.3b", steps=800), "runs/ava",
        ...                         character=ava)
        >>> new_version = attach_lora(ava, result.lora_bytes, result.info["base_model_id"], info=result.info)
        ```
    """
    if loaded.preset.task != "video":
        raise ConfigError(f"preset '{loaded.preset.name}' is a still preset: train it with train_character_lora")
    return train_character_lora(loaded, spec, out_dir, **kwargs)


__all__ = [
    "SIDE_MULTIPLE",
    "TRAINABLE_VIDEO_PIPELINES",
    "VALIDATION_FRAMES",
    "WAN_TARGETS",
    "check_trainable",
    "encode_clip_latents",
    "flow_shift_of",
    "shift_sigmas",
    "train_wan_lora",
    "trained_expert",
]
