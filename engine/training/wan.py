"""Character-LoRA training on a Wan video transformer (text-to-video presets), resumable to the bit.

`train_wan_lora` is the Wan counterpart of `trainer.train_character_lora`, with the same contract (arguments,
`TrainResult`, `info` keys, checkpoints, resume rules, validation by likeness, best-checkpoint selection) and the
same shared pieces (`dataset`, `checkpoint`, `validation.select_best` / `likeness`, `chart`, `export`). What differs:

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
- Validation renders each prompt as a short clip (`VALIDATION_FRAMES` frames at the training side, seeded,
  `validation_steps` steps, the preset's guidance) and scores every frame's likeness; a clip's score is the mean
  over its frames (a frame without the face scores 0).
- Export: `WanPipeline.save_lora_weights` with the adapter metadata (alpha), canonicalised like the SDXL file. No
  kohya file: diffusers has no Wan -> kohya converter and the kohya format is an SD/SDXL convention;
  `paths` has no `kohya_file`.

Refused, one line each, before any weights are touched: image-conditioned presets (I2V, FLF2V, TI2V, VACE: their
transformers take conditioning channels or control streams a still-image objective does not exercise), presets
with a speed LoRA (a step-distilled adapter already in the transformer; train on the preset without it, same base),
and a training side that is not a multiple of 16 (VAE stride 8 x patch 2).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine._core.errors import ConfigError, InputError

from .export import ADAPTER_NAME, UNET_TARGETS
from .spec import TrainSpec
from .trainer import ProgressFn, TrainResult, _check_resume, _info, _lora_config, _optimizer, _resolve_precision
from .validation import Validation

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


class _WanModels:
    """The transformer a run adapts, its trainable parameters by stable name, and how to put it back."""

    def __init__(self, pipe, expert: str):
        self.expert = expert
        self.model = getattr(pipe, expert)
        self.named = {expert: self.model}
        self._grad = [p.requires_grad for p in self.model.parameters()]
        self._training = self.model.training
        self._ckpt = bool(getattr(self.model, "is_gradient_checkpointing", False))
        self._flag = "_hf_peft_config_loaded" in vars(self.model)

    def add_lora(self, spec: TrainSpec) -> None:
        import torch

        if getattr(self.model, "peft_config", None):
            raise ConfigError(
                f"the pipeline's {self.expert} already carries LoRA adapters ({', '.join(self.model.peft_config)}): "
                "train on a freshly loaded pipeline"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            self.model.requires_grad_(False)
            self.model.add_adapter(_lora_config(spec, WAN_TARGETS), ADAPTER_NAME)
        for p in self.params().values():  # LoRA weights train in fp32 whatever the base dtype (mixed precision)
            p.data = p.data.float()

    def params(self) -> dict:
        return {f"{self.expert}.{n}": p for n, p in self.model.named_parameters() if p.requires_grad}

    def snapshot(self) -> dict:
        return {k: p.detach().to("cpu", copy=True) for k, p in self.params().items()}

    def load(self, tensors: dict, what: str) -> None:
        import torch

        params = self.params()
        if set(params) != set(tensors):
            raise InputError(
                f"{what} holds LoRA tensors for another configuration (rank, targets or expert differ): train into a "
                "new folder"
            )
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(tensors[k].to(p.device, p.dtype))

    def restore(self, keep_adapter: bool) -> None:
        """Unwrap the peft layers (the original modules go back in place), drop the peft config and diffusers'
        `_hf_peft_config_loaded` flag, and put back requires_grad, train mode and gradient checkpointing."""
        m = self.model
        if not keep_adapter and getattr(m, "peft_config", None):
            from diffusers.utils import recurse_remove_peft_layers

            recurse_remove_peft_layers(m)
            del m.peft_config
            if not self._flag:
                vars(m).pop("_hf_peft_config_loaded", None)
        for p, g in zip(m.parameters(), self._grad):
            p.requires_grad_(g)
        m.train(self._training)
        if not self._ckpt and getattr(m, "is_gradient_checkpointing", False):
            m.disable_gradient_checkpointing()


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

        from .dataset import render_crop

        pixels = torch.stack([render_crop(images[s.image], s.crop, resolution, s.flip) for s in samples])
        self.latents = encode_clip_latents(pipe.vae, pixels, device)
        captions = sorted({im.caption for im in images})
        self.caption_of = [captions.index(images[s.image].caption) for s in samples]
        self.captions = captions
        with torch.no_grad():
            embeds, _ = pipe.encode_prompt(
                prompt=captions,
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


class _WanStep:
    """One micro-batch's flow-matching loss, noise and sigmas from the run's seeded generator."""

    def __init__(self, pipe, spec: TrainSpec, cache: _WanCache, prior: _WanCache | None, expert: str, accelerator):
        import torch

        model = getattr(pipe, expert)
        self.spec, self.cache, self.prior, self.model, self.accelerator = spec, cache, prior, model, accelerator
        self.device = model.device
        self.dtype = model.dtype
        self.shift = flow_shift_of(pipe.scheduler)
        self.timesteps = float(pipe.scheduler.config.get("num_train_timesteps", 1000))
        boundary = getattr(pipe.config, "boundary_ratio", None) if expert == "transformer_2" else None
        # low-noise expert: u below the shifted boundary, so sigma < boundary_ratio (the range it denoises)
        self.u_max = 1.0 if boundary is None else boundary / (self.shift - (self.shift - 1) * boundary)
        self.generator = torch.Generator("cpu").manual_seed(spec.seed)

    def _mse(self, cache: _WanCache, idx: list[int]):
        import torch
        import torch.nn.functional as F

        x0 = cache.latents[torch.tensor(idx)].to(self.device, torch.float32)
        noise = torch.randn(x0.shape, generator=self.generator, dtype=torch.float32).to(self.device)
        u = torch.rand((len(idx),), generator=self.generator, dtype=torch.float32) * self.u_max
        sigma = shift_sigmas(u, self.shift).to(self.device)
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        target = noise - x0
        embeds = cache.embeds[torch.tensor([cache.caption_of[i] for i in idx])].to(self.device, self.dtype)
        with self.accelerator.autocast():
            pred = self.model(
                hidden_states=noisy.to(self.dtype),
                timestep=sigma * self.timesteps,
                encoder_hidden_states=embeds,
                return_dict=False,
            )[0]
        return F.mse_loss(pred.float(), target)

    def loss(self, position: int):
        from .dataset import sample_order

        b = self.spec.batch_size
        loss = self._mse(self.cache, sample_order(position, b, len(self.cache), self.spec.seed))
        if self.prior is not None:
            idx = sample_order(position, b, len(self.prior), self.spec.seed + 1)
            loss = loss + self.spec.prior_weight * self._mse(self.prior, idx)
        return loss


def render_validation_clips(pipe, prompts, *, resolution: int, steps: int, seed: int, guidance: float,
                            guidance_2: float | None, max_sequence_length: int, frames: int = VALIDATION_FRAMES):  # fmt: skip
    """(F, H, W, 3) uint8 clips of `prompts` (one each, seed `seed + i`) with whatever adapters `pipe` has active."""
    import numpy as np
    import torch

    clips = []
    for i, prompt in enumerate(prompts):
        kwargs = {"guidance_scale_2": guidance_2} if guidance_2 is not None else {}
        out = pipe(
            prompt=prompt,
            height=resolution,
            width=resolution,
            num_frames=frames,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator("cpu").manual_seed(seed + i),
            max_sequence_length=max_sequence_length,
            output_type="np",
            **kwargs,
        ).frames[0]
        clips.append((np.clip(np.asarray(out), 0.0, 1.0) * 255).round().astype(np.uint8))
    return clips


def clip_likeness(clips, reference, analyzer) -> tuple[float | None, tuple[float | None, ...]]:
    """(mean over clips, per-clip scores): a clip scores the mean of its frames' likeness (`validation.likeness`,
    a frame without the face counts 0) and None when no frame shows a face; the mean is None when no clip does."""
    import numpy as np

    from .validation import likeness

    per = tuple(likeness(list(clip), reference, analyzer)[0] for clip in clips)
    if all(p is None for p in per):
        return None, per
    return round(float(np.mean([p or 0.0 for p in per])), 3), per


def train_wan_lora(
    loaded,
    spec: TrainSpec,
    out_dir: str | os.PathLike,
    *,
    character,
    analyzer=None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
    keep_adapter: bool = False,
) -> TrainResult:
    """Train an identity LoRA of `character` on a Wan text-to-video preset's transformer and export it to `out_dir`.

    Same arguments, result and checkpoint/resume contract as `train_character_lora` (see there); `info["target"]`
    is `"wan-transformer"`, `info["experts"]` names the trained transformer, and `paths` has no `kohya_file`.

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
    import torch
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    from engine._core.atomic import ensure_writable_dir

    from . import checkpoint as ck
    from .dataset import build_training_set, plan_samples
    from .validation import select_best

    preset = loaded.preset
    if preset.task != "video":
        raise ConfigError(f"preset '{preset.name}' is a still preset: train it with train_character_lora")
    check_trainable(preset)
    if preset.name != spec.preset:
        raise ConfigError(f"the pipeline is preset '{preset.name}' but the spec says '{spec.preset}': load the same")
    if loaded.plan.offload == "sequential":
        raise ConfigError(
            "training cannot run with sequential CPU offload: use a GPU with more memory, or --device cpu"
        )
    if spec.train_text_encoder:
        raise ConfigError("train_text_encoder applies to SDXL: Wan LoRA training adapts the transformer only")
    resolution = spec.resolution or min(preset.width, preset.height)
    if resolution % SIDE_MULTIPLE:
        raise ConfigError(
            f"Wan trains at sides that are multiples of {SIDE_MULTIPLE}: --resolution {resolution} is not (try "
            f"{max(SIDE_MULTIPLE, resolution // SIDE_MULTIPLE * SIDE_MULTIPLE)})"
        )
    out = ensure_writable_dir(out_dir, what="training folder")
    if analyzer is None:
        from engine.identity.registry import get_analyzer

        analyzer = get_analyzer()
    from engine.characters.service import identity_reference

    reference = identity_reference(character, analyzer.info)
    tset = build_training_set(character, spec, analyzer)
    pipe = loaded.pipe
    models = _WanModels(pipe, trained_expert(pipe))
    transformer = models.model
    device = str(transformer.device.type)
    precision = _resolve_precision(spec, device)
    accelerator = Accelerator(
        mixed_precision=precision, gradient_accumulation_steps=spec.grad_accum, cpu=device == "cpu"
    )
    models.add_lora(spec)
    try:
        want_ckpt = spec.gradient_checkpointing if spec.gradient_checkpointing is not None else device == "cuda"
        if want_ckpt:
            transformer.enable_gradient_checkpointing()
        msl = preset.max_sequence_length
        samples = plan_samples(tset.images, resolution, spec, tset.flip)
        cache = _WanCache(pipe, tset.images, samples, resolution, device, msl)
        prior = None
        if tset.prior:
            prior_samples = plan_samples(
                tset.prior, resolution, spec.model_copy(update={"augment_variants": 1}), False
            )
            prior = _WanCache(pipe, tset.prior, prior_samples, resolution, device, msl)
        params = models.params()
        optimizer, optimizer_name = _optimizer(list(params.values()), spec, device)
        lr_scheduler = get_scheduler(
            "constant_with_warmup" if spec.lr_warmup_steps else "constant",
            optimizer=optimizer,
            num_warmup_steps=spec.lr_warmup_steps,
        )
        optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
        stepper = _WanStep(pipe, spec, cache, prior, models.expert, accelerator)

        losses: list[tuple[int, float]] = []
        validations: list[Validation] = []
        best_lora: dict | None = None
        step = 0
        resumed_from = None
        latest = ck.latest_checkpoint(out) if resume else None
        if latest is not None:
            c = ck.load_checkpoint(latest)
            _check_resume(c, spec, tset.sha256s)
            models.load(c.lora, f"checkpoint {latest}")
            optimizer.load_state_dict(c.state["optimizer"])
            lr_scheduler.load_state_dict(c.state["lr_scheduler"])
            if accelerator.scaler is not None and "scaler" in c.state:
                accelerator.scaler.load_state_dict(c.state["scaler"])
            ck.restore_rng(c.state["rng"], stepper.generator)
            losses = [(int(s), float(v)) for s, v in c.meta.get("losses", [])]
            validations = [Validation.from_dict(d) for d in c.meta.get("validations", [])]
            best_lora = c.best_lora
            step = resumed_from = c.step

        def save(at: int) -> Path:
            best = select_best(validations)
            state = {
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_scheduler.state_dict(),
                "rng": ck.rng_state(stepper.generator),
            }
            if accelerator.scaler is not None:
                state["scaler"] = accelerator.scaler.state_dict()
            meta = {
                "format": "flx-train-checkpoint/1",
                "target": "wan-transformer",
                "expert": models.expert,
                "spec": spec.model_dump(mode="json"),
                "training_set": tset.sha256s,
                "losses": losses,
                "validations": [v.as_dict() for v in validations],
                "best_step": best.step if best else None,
                "optimizer": optimizer_name,
                "mixed_precision": precision,
            }
            return ck.save_checkpoint(
                out, at, lora=models.snapshot(), state=state, meta=meta, best_lora=best_lora,
                keep=spec.keep_checkpoints,
            )  # fmt: skip

        transformer.train()
        last_ckpt = latest
        stopped = False
        t0, done0 = time.perf_counter(), step
        while step < spec.steps:
            micro = []
            for k in range(spec.grad_accum):
                with accelerator.accumulate(transformer):
                    loss = stepper.loss((step * spec.grad_accum + k) * spec.batch_size)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(list(params.values()), spec.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                micro.append(float(loss.detach().item()))
            step += 1
            value = sum(micro) / len(micro)
            if not math.isfinite(value):
                raise ConfigError(
                    f"the loss became {value} at step {step}: lower --lr (now {spec.lr:g}) or use --mixed-precision no"
                )
            losses.append((step, value))
            if progress is not None:
                rate = (step - done0) / max(time.perf_counter() - t0, 1e-9)
                progress(step, spec.steps, value, rate, (spec.steps - step) / rate if rate > 0 else float("inf"))
            if step % spec.validate_every == 0 or step == spec.steps:
                transformer.eval()
                with torch.random.fork_rng(devices=[]), torch.no_grad():
                    clips = render_validation_clips(
                        pipe, spec.prompts(), resolution=resolution, steps=spec.validation_steps,
                        seed=spec.validation_seed, guidance=preset.guidance,
                        guidance_2=getattr(preset, "guidance_2", None), max_sequence_length=msl,
                    )  # fmt: skip
                transformer.train()
                since = [v for s, v in losses if s > (validations[-1].step if validations else 0)]
                score, per = clip_likeness(clips, reference, analyzer)
                validations.append(Validation(step, round(sum(since) / len(since), 6), score, per))
                if select_best(validations) is validations[-1]:
                    best_lora = models.snapshot()
            if step % spec.checkpoint_every == 0 or step == spec.steps:
                last_ckpt = save(step)
            if step < spec.steps and should_stop is not None and should_stop():
                if last_ckpt is None or ck.checkpoint_name(step) != Path(last_ckpt).name:
                    last_ckpt = save(step)
                stopped = True
                break

        paths: dict[str, Path] = {}
        if last_ckpt is not None:
            paths["checkpoint"] = Path(last_ckpt)
        best = select_best(validations)
        info = wan_info(loaded, spec, tset, resolution, losses, best, models.expert)
        if stopped:
            return TrainResult(None, paths, info, losses, validations, stopped=True, resumed_from=resumed_from)
        if best is not None and best_lora is not None:
            models.load(best_lora, "the best checkpoint")
        result = _export(models, spec, out, character, info, losses, validations, paths)
        result.resumed_from = resumed_from
        return result
    finally:
        models.restore(keep_adapter)


def wan_info(loaded, spec: TrainSpec, tset, resolution: int, losses, best, expert: str) -> dict[str, Any]:
    """`trainer._info`'s keys with the Wan target: base_model_sha256 is the base component's digest
    (`component_record(...)["sha256"]`, as `load_pipeline` recorded it), `experts` the trained transformer."""
    info = _info(loaded, spec, tset, resolution, losses, best)
    info.update(target="wan-transformer", text_encoder=False, experts=[expert])
    return info


def export_wan_diffusers(out_dir: str | os.PathLike, transformer, *, adapter: str = ADAPTER_NAME) -> Path:
    """Write `out_dir/pytorch_lora_weights.safetensors` with `WanPipeline.save_lora_weights` (adapter metadata
    included, so alpha != r loads at the trained strength), with a canonical header (same weights, same bytes)."""
    import tempfile

    from diffusers import WanPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    from engine._core.atomic import atomic_write_bytes, ensure_writable_dir

    from .export import DIFFUSERS_WEIGHT_NAME, canonical_safetensors, peft_layers

    out = ensure_writable_dir(out_dir, what="LoRA folder")
    with tempfile.TemporaryDirectory(dir=out, prefix=".flx-export-") as tmp:
        WanPipeline.save_lora_weights(
            tmp,
            weight_name=DIFFUSERS_WEIGHT_NAME,
            transformer_lora_layers=convert_state_dict_to_diffusers(peft_layers(transformer, adapter)),
            transformer_lora_adapter_metadata=transformer.peft_config[adapter].to_dict(),
        )
        data = canonical_safetensors((Path(tmp) / DIFFUSERS_WEIGHT_NAME).read_bytes())
    return atomic_write_bytes(out / DIFFUSERS_WEIGHT_NAME, data)


def _export(models: _WanModels, spec, out: Path, character, info, losses, validations, paths) -> TrainResult:
    from engine._core.atomic import atomic_write_text

    from .chart import write_chart

    diffusers_file = export_wan_diffusers(out / "lora", models.model)
    data = diffusers_file.read_bytes()
    info["lora_sha256"] = hashlib.sha256(data).hexdigest()
    history = {
        "info": info,
        "spec": spec.model_dump(mode="json"),
        "losses": losses,
        "validations": [v.as_dict() for v in validations],
    }
    hist = atomic_write_text(out / "history.json", json.dumps(history, indent=1, sort_keys=True))
    chart = write_chart(losses, validations, out / "chart.png", best_step=info["best_step"],
                        title=f"Wan LoRA training: {character.name}")  # fmt: skip
    paths.update(diffusers_dir=out / "lora", diffusers_file=diffusers_file, chart=chart, history=hist)
    return TrainResult(data, paths, info, losses, validations)


__all__ = [
    "SIDE_MULTIPLE",
    "TRAINABLE_VIDEO_PIPELINES",
    "VALIDATION_FRAMES",
    "WAN_TARGETS",
    "check_trainable",
    "clip_likeness",
    "encode_clip_latents",
    "export_wan_diffusers",
    "flow_shift_of",
    "render_validation_clips",
    "shift_sigmas",
    "train_wan_lora",
    "trained_expert",
    "wan_info",
]
