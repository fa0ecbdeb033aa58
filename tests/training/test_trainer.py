"""The training loop on the tiny SDXL twin: loss falls, a resume is exact, the exports reload in diffusers."""

from __future__ import annotations

import errno

import pytest
import torch
from training_helpers import latents as _latents
from training_helpers import spec as _spec

from engine._core.errors import ConfigError, OutputError
from engine.training import train_character_lora


def _fixed_batch_loss(loaded, spec, character, analyzer):
    """Denoising MSE of the pipeline's UNet on one fixed batch (the training crops, fixed noise and timesteps)."""
    from engine.training.dataset import build_training_set, plan_samples
    from engine.training.trainer import _Cache, _time_ids

    pipe = loaded.pipe
    tset = build_training_set(character, spec, analyzer)
    cache = _Cache(pipe, tset.images, plan_samples(tset.images, 64, spec, tset.flip), 64, "cpu", True)
    g = torch.Generator().manual_seed(7)
    lat = cache.latents
    noise = torch.randn(lat.shape, generator=g)
    t = torch.full((lat.shape[0],), 400, dtype=torch.long)
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    idx = torch.tensor(cache.caption_of)
    with torch.no_grad():
        pred = pipe.unet(sched.add_noise(lat, noise, t), t, encoder_hidden_states=cache.embeds[idx],
                         added_cond_kwargs={"text_embeds": cache.pooled[idx], "time_ids": _time_ids(64, len(idx), "cpu",
                                                                                                    torch.float32)}).sample  # fmt: skip
    return float(torch.nn.functional.mse_loss(pred, noise))


def test_loss_falls_on_a_fixed_batch(fresh_sdxl, ava, analyzer, tmp_path):
    loaded = fresh_sdxl()
    # one crop per image, no flips: the fixed batch is the training data itself, seen at one noise draw and timestep
    spec = _spec(steps=15, lr=1e-1, rank=8, augment_variants=1, flip="off")
    before = _fixed_batch_loss(loaded, spec, ava, analyzer)
    seen = []
    result = train_character_lora(loaded, spec, tmp_path / "run", character=ava, analyzer=analyzer,
                                  keep_adapter=True, progress=lambda *a: seen.append(a))  # fmt: skip
    after = _fixed_batch_loss(loaded, spec, ava, analyzer)
    assert after < 0.96 * before, (before, after)  # measured 0.944 (a random tiny UNet: attention moves it little)
    assert [s[0] for s in seen] == list(range(1, 16)) and all(s[1] == 15 and s[3] > 0 for s in seen)
    assert result.info["final_loss"] == result.losses[-1][1] and len(result.info["training_set"]) == 2


def test_resume_reproduces_the_uninterrupted_run_exactly(fresh_sdxl, ava, analyzer, tmp_path):
    loaded = fresh_sdxl()
    spec = _spec(steps=5, grad_accum=2, lr_warmup_steps=2)
    full = train_character_lora(loaded, spec, tmp_path / "full", character=ava, analyzer=analyzer)
    before = _latents(loaded.pipe)
    stops = iter([False, True])
    part = train_character_lora(loaded, spec, tmp_path / "part", character=ava, analyzer=analyzer,
                                should_stop=lambda: next(stops))  # fmt: skip
    assert part.stopped and part.lora_bytes is None and part.paths["checkpoint"].name == "step-000002"
    assert part.losses == full.losses[:2]
    rest = train_character_lora(loaded, spec, tmp_path / "part", character=ava, analyzer=analyzer)
    assert rest.resumed_from == 2 and not rest.stopped
    assert rest.losses == full.losses  # bit-identical, the resumed steps included
    assert rest.lora_bytes == full.lora_bytes
    assert torch.equal(_latents(loaded.pipe), before)  # the adapter was removed: the pipeline renders as before
    with pytest.raises(ConfigError, match="rank"):
        train_character_lora(loaded, _spec(steps=5, grad_accum=2, lr_warmup_steps=2, rank=8),
                             tmp_path / "part", character=ava, analyzer=analyzer)  # fmt: skip


def test_disk_full_on_checkpoint_keeps_the_previous_one(fresh_sdxl, ava, analyzer, tmp_path, monkeypatch):
    import engine.training.checkpoint as ck

    loaded = fresh_sdxl()
    spec = _spec(steps=3, checkpoint_every=1)
    real = ck._write_state
    calls = []

    def full_disk(path, state):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint: its LoRA file is written, then the disk fills up
            path.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, state)

    monkeypatch.setattr(ck, "_write_state", full_disk)
    with pytest.raises(OutputError, match="No space left on device.*previous checkpoint is kept"):
        train_character_lora(loaded, spec, tmp_path / "run", character=ava, analyzer=analyzer)
    kept = ck.list_checkpoints(tmp_path / "run")
    assert [p.name for p in kept] == ["step-000001"]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000001"]  # no temp left
    assert ck.load_checkpoint(kept[0]).step == 1
    monkeypatch.setattr(ck, "_write_state", real)
    done = train_character_lora(loaded, spec, tmp_path / "run", character=ava, analyzer=analyzer)
    assert done.resumed_from == 1 and done.lora_bytes


def test_video_and_identity_presets_are_refused_before_any_work(tiny_settings, cpu_plan, ava, analyzer, tmp_path):
    from engine.pipelines.loading import LoadedPipeline
    from engine.presets import load_preset

    for name, match in (("tiny-video-wan21-i2v-480p", "conditions the transformer on images"),
                        ("tiny-stills-faceid-sdxl", "not plain SDXL")):  # fmt: skip
        unloaded = LoadedPipeline(pipe=None, preset=load_preset(name, tiny_settings.presets_dir), plan=cpu_plan)
        with pytest.raises(ConfigError, match=match):
            train_character_lora(unloaded, _spec(preset=name), tmp_path, character=ava, analyzer=analyzer)


def test_a_trained_warm_pipeline_is_exactly_as_loaded(fresh_sdxl, ava, analyzer, tmp_path):
    """The peft layers are unwrapped from the UNet and both text encoders (the original modules back in place), the
    peft config and diffusers' `_hf_peft_config_loaded` flag are gone, and the training flags are put back."""
    loaded = fresh_sdxl()
    pipe = loaded.pipe
    models = {"unet": pipe.unet, "te1": pipe.text_encoder, "te2": pipe.text_encoder_2}
    modules = {k: dict(m.named_modules()) for k, m in models.items()}
    flags = {k: [(n, p.requires_grad) for n, p in m.named_parameters()] for k, m in models.items()}
    modes = {k: m.training for k, m in models.items()}
    flagged = {k: "_hf_peft_config_loaded" in vars(m) for k, m in models.items()}
    before = _latents(pipe)
    train_character_lora(loaded, _spec(steps=2, train_text_encoder=True), tmp_path / "run", character=ava,
                         analyzer=analyzer)  # fmt: skip
    for k, m in models.items():
        assert not hasattr(m, "peft_config") and ("_hf_peft_config_loaded" in vars(m)) == flagged[k], k
        assert dict(m.named_modules()).keys() == modules[k].keys(), k
        assert all(modules[k][n] is mod for n, mod in m.named_modules()), k
        assert [(n, p.requires_grad) for n, p in m.named_parameters()] == flags[k] and m.training == modes[k], k
    assert torch.equal(_latents(pipe), before)
