"""The character-LoRA training loop, resumable to the bit, and its SDXL objective (UNet, optionally text encoders).

`train_character_lora` takes a pipeline loaded by `engine.pipelines.loading.load_pipeline` (so the weights are the
verified ones), adds a peft LoRA (`ADAPTER_NAME`) to the denoiser, trains it and exports the result (`export.py`).
One loop (`_train`) serves every model family; what differs is an objective object: `_SDXL` here (diffusers'
noise-prediction objective, or v-prediction per the scheduler config), `wan._Wan` for video presets. An objective
names the models that get the LoRA (`_Models`, which also puts them back), builds the latent/text cache and the
one-step loss, renders and scores a validation, and says how the diffusers file is exported. Design choices, and why:

- Latents and text embeddings are computed once before the loop (when the text encoders are not trained): each
  image's `augment_variants` crops, and their mirrored copies when flips are on, are VAE-encoded up front (the
  distribution mean, so the cache is deterministic), so a step costs one denoiser forward and backward.
- All randomness of a step (data order aside, which is a pure function of the position) comes from one CPU
  `torch.Generator` whose state is checkpointed, so a resumed run draws the same noise and timesteps; LoRA init is
  seeded inside `torch.random.fork_rng`, leaving the caller's RNG alone.
- `accelerate.Accelerator` handles mixed precision (autocast and, for fp16, the grad scaler), gradient accumulation
  and clipping; the denoiser is not passed through `prepare`, which would wrap its `forward` for good (the pipeline
  renders with the same model afterwards).
- The LoRA is unwrapped from the pipeline's models afterwards (unless `keep_adapter`), so a warm pipeline is exactly
  as loaded; its training flags (requires_grad, gradient checkpointing, train mode) are put back too.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine._core.errors import ConfigError, InputError

from .export import ADAPTER_NAME, TEXT_ENCODER_TARGETS, UNET_TARGETS
from .spec import TrainSpec
from .validation import Validation

TRAINABLE_PIPELINES = ("sdxl",)

ProgressFn = Callable[[int, int, float, float, float], None]  # (step, total, loss, steps_per_s, eta_s)


@dataclass
class TrainResult:
    """What a run produced.

    `lora_bytes` is the diffusers LoRA file verbatim (what a character's `.flx` stores); None when the run was
    stopped early (a checkpoint was saved: call again with the same spec and folder to resume). `paths` has
    `diffusers_dir`, `diffusers_file`, `kohya_file`, `chart`, `history` and `checkpoint` (the last one saved).
    `info` holds: target, base_model_id, base_model_sha256, base_model (the component record), rank, alpha,
    text_encoder, steps, trigger, class_word, resolution, training_set (image sha256s), skipped, flip, best_step,
    best_likeness, final_loss, lora_sha256.
    """

    lora_bytes: bytes | None
    paths: dict[str, Path]
    info: dict[str, Any]
    losses: list[tuple[int, float]] = field(default_factory=list)
    validations: list[Validation] = field(default_factory=list)
    stopped: bool = False
    resumed_from: int | None = None


def _resolve_precision(spec: TrainSpec, device: str) -> str:
    import torch

    if spec.mixed_precision == "auto":
        if device != "cuda":
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if spec.mixed_precision == "fp16" and device != "cuda":
        raise ConfigError("mixed_precision fp16 needs CUDA: use --mixed-precision no (or bf16) on this machine")
    return spec.mixed_precision


def _optimizer(params, spec: TrainSpec, device: str):
    import torch

    want = spec.use_8bit_adam
    if want != "off" and device == "cuda":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, lr=spec.lr, weight_decay=spec.weight_decay), "adamw8bit"
        except ImportError:
            if want == "on":
                raise ConfigError("use_8bit_adam on needs bitsandbytes: pip install bitsandbytes") from None
    elif want == "on":
        raise ConfigError("use_8bit_adam on needs CUDA: use --use-8bit-adam auto on this machine")
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay), "adamw"


def _lora_config(spec: TrainSpec, targets):
    from peft import LoraConfig

    return LoraConfig(
        r=spec.rank, lora_alpha=spec.lora_alpha, init_lora_weights="gaussian", target_modules=list(targets)
    )


class _Models:
    """The models a run adapts (the denoiser first, then any text encoders) by stable name, their trainable
    parameters, and how to put them back exactly as loaded. `differ` names what else a checkpoint's tensors may
    have been made for, in the refusal."""

    def __init__(self, named: dict, targets, differ: str):
        self.named, self.targets, self.differ = named, targets, differ
        self.denoiser, *self.text_encoders = named.values()
        self._grad = {k: [p.requires_grad for p in m.parameters()] for k, m in named.items()}
        self._training = {k: m.training for k, m in named.items()}
        self._flag = {k: "_hf_peft_config_loaded" in vars(m) for k, m in named.items()}
        self._ckpt = bool(getattr(self.denoiser, "is_gradient_checkpointing", False))

    def add_lora(self, spec: TrainSpec) -> None:
        import torch

        for name, m in self.named.items():
            if getattr(m, "peft_config", None):
                raise ConfigError(
                    f"the pipeline's {name} already carries LoRA adapters ({', '.join(m.peft_config)}): train on a "
                    "freshly loaded pipeline"
                )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            for m in self.named.values():
                m.requires_grad_(False)
                if m is self.denoiser:
                    m.add_adapter(_lora_config(spec, self.targets), ADAPTER_NAME)
                else:  # transformers' own add_adapter wants peft >= 0.22; peft injects the same LoRA layers
                    from peft import inject_adapter_in_model

                    config = _lora_config(spec, TEXT_ENCODER_TARGETS)
                    inject_adapter_in_model(config, m, ADAPTER_NAME)
                    m.peft_config = {ADAPTER_NAME: config}
        for p in self.params().values():  # LoRA weights train in fp32 whatever the base dtype (mixed precision)
            p.data = p.data.float()

    def params(self) -> dict:
        return {f"{name}.{n}": p for name, m in self.named.items() for n, p in m.named_parameters() if p.requires_grad}

    def snapshot(self) -> dict:
        return {k: p.detach().to("cpu", copy=True) for k, p in self.params().items()}

    def load(self, tensors: dict, what: str) -> None:
        import torch

        params = self.params()
        if set(params) != set(tensors):
            raise InputError(
                f"{what} holds LoRA tensors for another configuration (rank, targets or {self.differ} differ): "
                "train into a new folder"
            )
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(tensors[k].to(p.device, p.dtype))

    def restore(self, keep_adapter: bool) -> None:
        """Unwrap the peft layers (the original modules go back in place), drop the peft config and diffusers'
        `_hf_peft_config_loaded` flag, and put back requires_grad, train mode and gradient checkpointing."""
        for k, m in self.named.items():
            if not keep_adapter and getattr(m, "peft_config", None):
                from diffusers.utils import recurse_remove_peft_layers

                recurse_remove_peft_layers(m)
                del m.peft_config
                if not self._flag[k]:
                    vars(m).pop("_hf_peft_config_loaded", None)
            for p, g in zip(m.parameters(), self._grad[k]):
                p.requires_grad_(g)
            m.train(self._training[k])
        if not self._ckpt and getattr(self.denoiser, "is_gradient_checkpointing", False):
            self.denoiser.disable_gradient_checkpointing()


def _crops(images, samples, resolution: int):
    """The samples' crops as one (N, 3, H, W) batch in [-1, 1], the sorted captions and each sample's caption."""
    import torch

    from .dataset import render_crop

    pixels = torch.stack([render_crop(images[s.image], s.crop, resolution, s.flip) for s in samples])
    captions = sorted({im.caption for im in images})
    return pixels, captions, [captions.index(images[s.image].caption) for s in samples]


class _Loss:
    """A micro-batch's loss: the objective's `_mse` on the training samples plus the weighted prior term, with the
    data order a pure function of the position and all noise from one seeded CPU generator (checkpointed)."""

    def __init__(self, spec: TrainSpec, cache, prior, accelerator):
        import torch

        self.spec, self.cache, self.prior, self.accelerator = spec, cache, prior, accelerator
        self.generator = torch.Generator("cpu").manual_seed(spec.seed)
        self.orders: dict = {}  # data-order permutations per (stream, epoch), built once

    def _order(self, position: int, n: int, seed: int):
        import torch

        from .dataset import sample_order

        if len(self.orders) > 64:  # epochs only move forward: drop the old ones
            self.orders.clear()
        return torch.tensor(sample_order(position, self.spec.batch_size, n, seed, cache=self.orders))

    def loss(self, position: int):
        loss = self._mse(self.cache, self._order(position, len(self.cache), self.spec.seed))
        if self.prior is not None:
            idx = self._order(position, len(self.prior), self.spec.seed + 1)
            loss = loss + self.spec.prior_weight * self._mse(self.prior, idx)
        return loss


def _encode_latents(vae, pixels, device):
    """(N, C, h, w) latents of (N, 3, H, W) pixels: the posterior mean, scaled (and shifted) as the UNet expects."""
    import torch

    dtype = next(vae.parameters()).dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        out = []
        with torch.no_grad():
            for chunk in pixels.split(8):
                x = chunk.to(device, torch.float32 if upcast else dtype)
                lat = vae.encode(x).latent_dist.mean.float()
                shift = getattr(vae.config, "shift_factor", None)
                if shift is not None:
                    lat = lat - shift
                out.append((lat * vae.config.scaling_factor).cpu())
        return torch.cat(out)
    finally:
        if upcast:
            vae.to(dtype)


class _Cache:
    """Cached latents per sample and text embeddings per caption (or captions, when the text encoders train)."""

    def __init__(self, pipe, images, samples, resolution: int, device: str, encode_text: bool):
        import torch

        pixels, self.captions, self.caption_of = _crops(images, samples, resolution)
        self.latents = _encode_latents(pipe.vae, pixels, device)
        self.caption_index = torch.tensor(self.caption_of)
        self.embeds = self.pooled = None
        if encode_text:
            with torch.no_grad():
                embeds, _, pooled, _ = pipe.encode_prompt(
                    prompt=self.captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
                )
            self.embeds, self.pooled = embeds.detach(), pooled.detach()

    def __len__(self) -> int:
        return self.latents.shape[0]


def _time_ids(resolution: int, n: int, device, dtype):
    """SDXL's micro-conditioning: (original size, crop top-left, target size); crops are resized, not cut."""
    import torch

    return torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], device=device, dtype=dtype).repeat(
        n, 1
    )


class _Step(_Loss):
    """One micro-batch's loss: noise and timesteps from the run's generator, diffusers' DDPM objective."""

    def __init__(self, pipe, spec: TrainSpec, cache: _Cache, prior: _Cache | None, resolution: int, accelerator):
        from diffusers import DDPMScheduler

        super().__init__(spec, cache, prior, accelerator)
        self.pipe = pipe
        self.unet = pipe.unet
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction = self.noise_scheduler.config.prediction_type
        if self.prediction not in ("epsilon", "v_prediction"):
            raise ConfigError(
                f"the base model's scheduler predicts '{self.prediction}': character LoRA training supports "
                "epsilon and v_prediction SDXL models"
            )
        self.timesteps = self.noise_scheduler.config.num_train_timesteps
        self.time_ids = _time_ids(resolution, spec.batch_size, self.device, self.dtype)

    def _text(self, cache: _Cache, idx):
        if cache.embeds is not None:
            sel = cache.caption_index[idx]
            return cache.embeds[sel], cache.pooled[sel]
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=[cache.captions[cache.caption_of[i]] for i in idx.tolist()],
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return embeds, pooled

    def _mse(self, cache: _Cache, idx):
        import torch
        import torch.nn.functional as F

        latents = cache.latents[idx].to(self.device, self.dtype)
        noise = torch.randn(latents.shape, generator=self.generator, dtype=torch.float32).to(self.device, self.dtype)
        t = torch.randint(0, self.timesteps, (len(idx),), generator=self.generator).to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        target = noise if self.prediction == "epsilon" else self.noise_scheduler.get_velocity(latents, noise, t)
        embeds, pooled = self._text(cache, idx)
        with self.accelerator.autocast():
            pred = self.unet(
                noisy,
                t,
                encoder_hidden_states=embeds.to(self.dtype),
                added_cond_kwargs={
                    "text_embeds": pooled.to(self.dtype),
                    "time_ids": self.time_ids,
                },
                return_dict=False,
            )[0]
        return F.mse_loss(pred.float(), target.float())


class _SDXL:
    """SDXL's part of a run: the UNet (and both text encoders, when they train) gets the LoRA, the DDPM loss, still
    renders scored by likeness, diffusers + kohya exports. `_train` uses exactly these members; `wan._Wan` has them
    too. Nothing here touches the pipeline before `models` (refusals come first)."""

    target, slot, kohya, title, experts, checkpoint_meta = "sdxl-unet", "unet", True, "LoRA training", None, {}

    def __init__(self, loaded):
        self.loaded, self.pipe = loaded, loaded.pipe

    def check(self, spec: TrainSpec, resolution: int) -> None:
        """SDXL trains at any side the spec allows: no refusals of its own."""

    def models(self, spec: TrainSpec) -> _Models:
        pipe = self.pipe
        named = {"unet": pipe.unet}
        if spec.train_text_encoder:
            named.update(te1=pipe.text_encoder, te2=pipe.text_encoder_2)
        return _Models(named, UNET_TARGETS, "text encoders")

    def cache(self, images, samples, resolution: int, device: str, spec: TrainSpec) -> _Cache:
        return _Cache(self.pipe, images, samples, resolution, device, encode_text=not spec.train_text_encoder)

    def step(self, spec: TrainSpec, cache, prior, resolution: int, accelerator) -> _Step:
        return _Step(self.pipe, spec, cache, prior, resolution, accelerator)

    def render(self, spec: TrainSpec, resolution: int):
        from . import validation  # looked up per call: tests swap the renderer

        return validation.render_validation(
            self.pipe, spec.prompts(), resolution=resolution, steps=spec.validation_steps, seed=spec.validation_seed,
            guidance=self.loaded.preset.guidance,
        )  # fmt: skip

    def likeness(self, images, reference, analyzer):
        from .validation import likeness

        return likeness(images, reference, analyzer)

    def pipeline_cls(self):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline


def _check_resume(ckpt, spec: TrainSpec, training_set: list[str]) -> None:
    saved = ckpt.meta.get("spec") or {}
    want = spec.resume_key()
    diff = sorted(k for k in set(saved) | set(want) if k not in ("steps",) and saved.get(k) != want.get(k))
    if diff:
        raise ConfigError(
            f"checkpoint {ckpt.path} was made with other settings ({', '.join(diff[:5])} differ): train into a new "
            "folder, or pass the same settings to resume"
        )
    if ckpt.meta.get("training_set") != training_set:
        raise ConfigError(
            f"checkpoint {ckpt.path} was trained on other images (the training set changed): train into a new folder"
        )
    if ckpt.step > spec.steps:
        raise ConfigError(f"checkpoint {ckpt.path} is at step {ckpt.step}, past --steps {spec.steps}: raise --steps")


def check_trainable_preset(preset) -> None:
    """Refuse (one `ConfigError` line) a preset this trainer cannot train: cheap, so callers run it before the
    weights load. Plain SDXL and Wan text-to-video presets train (`wan.check_trainable` says which)."""
    if preset.task == "video":
        from .wan import check_trainable

        check_trainable(preset)
    elif preset.pipeline not in TRAINABLE_PIPELINES:
        raise ConfigError(
            f"preset '{preset.name}' ({preset.pipeline}) is not plain SDXL: train on stills-sdxl (or its tiny twin); "
            "the LoRA then loads into every SDXL preset on the same base model"
        )


def train_character_lora(
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
    """Train an identity LoRA of `character` on `loaded`'s base model and export it into `out_dir`.

    Args:
        loaded (`LoadedPipeline`): `load_pipeline(preset, store, plan)` of `spec.preset` (a plain SDXL preset, or
            a Wan text-to-video one: see `wan.py`).
        spec (`TrainSpec`): the run's settings.
        out_dir (`str` or `os.PathLike`): run folder: `checkpoints/`, `lora/` (diffusers), `<name>-kohya.safetensors`,
            `history.json`, `chart.png`.
        character (`Character`): whose images (`spec.source`) and identity (the likeness check) are used.
        analyzer (`FaceAnalyzer`, *optional*): identity analyzer; defaults to the character's default encoder (dlib).
        progress (`callable`, *optional*): `progress(step, total, loss, steps_per_s, eta_s)` after every step.
        should_stop (`callable`, *optional*): polled after every step; True saves a checkpoint and returns a result
            with `stopped=True` (the CLI wires Ctrl-C to it).
        resume (`bool`, *optional*, defaults to `True`): continue from the newest checkpoint in `out_dir` (its
            settings must match `spec`, `steps` aside); False ignores existing checkpoints.
        keep_adapter (`bool`, *optional*, defaults to `False`): leave the trained LoRA (the exported weights) active
            in `loaded.pipe` instead of removing it.

    Raises:
        `ConfigError`: a preset that is not plain SDXL or Wan T2V (`wan.py` says which video presets train), a checkpoint
            made with other settings, an unusable precision/optimizer choice.
        `InputError`: too few images show the character (see `dataset.build_training_set`).
        `OutputError`: a checkpoint or export cannot be written (the previous checkpoint is kept).

    Examples:
        ```py
        >>> loaded = load_pipeline(load_preset("stills-sdxl", presets_dir), store, plan)
        >>> result = train_character_lora(loaded, TrainSpec(steps=800), "runs/ava", character=ava)
        >>> new_version = attach_lora(ava, result.lora_bytes, result.info["base_model_id"])
        ```
    """
    check_trainable_preset(loaded.preset)
    if loaded.preset.task == "video":  # the Wan transformer: same loop, its own objective (wan.py)
        from .wan import _Wan

        objective = _Wan(loaded)
    else:
        objective = _SDXL(loaded)
    return _train(loaded, spec, out_dir, objective, character=character, analyzer=analyzer, progress=progress,
                  should_stop=should_stop, resume=resume, keep_adapter=keep_adapter)  # fmt: skip


def _train(loaded, spec, out_dir, objective, *, character, analyzer, progress, should_stop, resume, keep_adapter):
    """The run itself, for any objective (`_SDXL`, `wan._Wan`): see `train_character_lora`."""
    import torch
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    from engine._core.atomic import ensure_writable_dir

    from . import checkpoint as ck
    from .dataset import build_training_set, plan_samples
    from .validation import select_best

    preset = loaded.preset
    if preset.name != spec.preset:
        raise ConfigError(f"the pipeline is preset '{preset.name}' but the spec says '{spec.preset}': load the same")
    if loaded.plan.offload == "sequential":
        raise ConfigError(
            "training cannot run with sequential CPU offload: use a GPU with more memory, or --device cpu"
        )
    resolution = spec.resolution or min(preset.width, preset.height)
    objective.check(spec, resolution)
    out = ensure_writable_dir(out_dir, what="training folder")
    if analyzer is None:
        from engine.identity.registry import get_analyzer

        analyzer = get_analyzer()
    from engine.characters.service import identity_reference

    reference = identity_reference(character, analyzer.info)
    tset = build_training_set(character, spec, analyzer)
    models = objective.models(spec)
    device = str(models.denoiser.device.type)
    precision = _resolve_precision(spec, device)
    accelerator = Accelerator(
        mixed_precision=precision, gradient_accumulation_steps=spec.grad_accum, cpu=device == "cpu"
    )
    models.add_lora(spec)
    try:
        want_ckpt = spec.gradient_checkpointing if spec.gradient_checkpointing is not None else device == "cuda"
        if want_ckpt:
            models.denoiser.enable_gradient_checkpointing()
        samples = plan_samples(tset.images, resolution, spec, tset.flip)
        cache = objective.cache(tset.images, samples, resolution, device, spec)
        prior = None
        if tset.prior:
            prior_samples = plan_samples(
                tset.prior, resolution, spec.model_copy(update={"augment_variants": 1}), False
            )
            prior = objective.cache(tset.prior, prior_samples, resolution, device, spec)
        trainable = list(models.params().values())
        optimizer, optimizer_name = _optimizer(trainable, spec, device)
        lr_scheduler = get_scheduler(
            "constant_with_warmup" if spec.lr_warmup_steps else "constant",
            optimizer=optimizer,
            num_warmup_steps=spec.lr_warmup_steps,
        )
        optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
        stepper = objective.step(spec, cache, prior, resolution, accelerator)

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
                **objective.checkpoint_meta,
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

        def train_mode(on: bool) -> None:
            for m in models.named.values():
                m.train(on)

        train_mode(True)
        last_ckpt = latest
        stopped = False
        t0, done0 = time.perf_counter(), step
        while step < spec.steps:
            micro = []
            for k in range(spec.grad_accum):
                with accelerator.accumulate(models.denoiser):
                    loss = stepper.loss((step * spec.grad_accum + k) * spec.batch_size)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:  # single process: unscale (fp16) and clip, as clip_grad_norm_ does
                        accelerator.unscale_gradients()
                        torch.nn.utils.clip_grad_norm_(trainable, spec.max_grad_norm)
                    optimizer.step()  # accelerate's wrappers skip these between accumulated micro-batches
                    lr_scheduler.step()
                    if accelerator.sync_gradients:
                        optimizer.optimizer.zero_grad(set_to_none=True)
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
                train_mode(False)
                with torch.random.fork_rng(devices=[]), torch.no_grad():
                    renders = objective.render(spec, resolution)
                train_mode(True)
                since = [v for s, v in losses if s > (validations[-1].step if validations else 0)]
                score, per = objective.likeness(renders, reference, analyzer)
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
        info = _info(loaded, spec, tset, resolution, losses, best, objective.target, objective.experts)
        if stopped:
            return TrainResult(None, paths, info, losses, validations, stopped=True, resumed_from=resumed_from)
        if best is not None and best_lora is not None:
            models.load(best_lora, "the best checkpoint")
        result = _export(objective, models, spec, out, character, info, losses, validations, paths)
        result.resumed_from = resumed_from
        return result
    finally:
        models.restore(keep_adapter)


def _info(loaded, spec: TrainSpec, tset, resolution: int, losses, best, target: str, experts=None) -> dict[str, Any]:
    """The run's record (`TrainResult.info`); `experts` names the trained transformer(s) of a multi-expert model.
    base_model_sha256 is the base component's digest, as `load_pipeline` recorded it."""
    base = loaded.models.get("base") or {}
    info = {
        "target": target,
        "base_model_id": base.get("id", loaded.preset.components.base),
        "base_model_sha256": base.get("sha256"),
        "base_model": base,
        "preset": loaded.preset.name,
        "rank": spec.rank,
        "alpha": spec.lora_alpha,
        "text_encoder": spec.train_text_encoder,
        "steps": spec.steps,
        "trigger": spec.trigger,
        "class_word": spec.class_word,
        "resolution": resolution,
        "training_set": tset.sha256s,
        "skipped": [{"image": n, "reason": r} for n, r in tset.skipped],
        "flip": tset.flip,
        "best_step": best.step if best else (losses[-1][0] if losses else None),
        "best_likeness": best.likeness if best else None,
        "final_loss": losses[-1][1] if losses else None,
    }
    if experts is not None:
        info["experts"] = list(experts)
    return info


def _export(objective, models: _Models, spec, out: Path, character, info, losses, validations, paths) -> TrainResult:
    """The diffusers file (and, for SDXL, the kohya file), `history.json` and `chart.png`."""
    import hashlib

    from engine._core.atomic import atomic_write_text

    from .chart import write_chart
    from .export import export_diffusers, export_kohya

    diffusers_file = export_diffusers(objective.pipeline_cls(), out / "lora", models.denoiser, models.text_encoders,
                                      slot=objective.slot)  # fmt: skip
    data = diffusers_file.read_bytes()
    info["lora_sha256"] = hashlib.sha256(data).hexdigest()
    kohya = {}
    if objective.kohya:  # diffusers has no Wan -> kohya converter, and kohya files are an SD/SDXL convention
        kohya["kohya_file"] = export_kohya(
            out / f"{character.name}-kohya.safetensors", models.denoiser, models.text_encoders, rank=spec.rank,
            alpha=spec.lora_alpha, metadata={"flx_trigger": spec.trigger, "flx_base_model": info["base_model_id"]},
        )  # fmt: skip
    history = {
        "info": info,
        "spec": spec.model_dump(mode="json"),
        "losses": losses,
        "validations": [v.as_dict() for v in validations],
    }
    hist = atomic_write_text(out / "history.json", json.dumps(history, indent=1, sort_keys=True))
    chart = write_chart(losses, validations, out / "chart.png", best_step=info["best_step"],
                        title=f"{objective.title}: {character.name}")  # fmt: skip
    paths.update(diffusers_dir=out / "lora", diffusers_file=diffusers_file, **kohya, chart=chart, history=hist)
    return TrainResult(data, paths, info, losses, validations)


__all__ = ["TRAINABLE_PIPELINES", "ProgressFn", "TrainResult", "train_character_lora"]
