"""Tiny SDXL stills through the real load + render path (from_pretrained of the weights folder)."""

from __future__ import annotations

import numpy as np
import pytest


def test_still_renders_from_folder_deterministically(load_tiny):
    from engine.pipelines.render import render_still

    loaded = load_tiny("tiny-stills-sdxl")
    a = render_still(loaded, "a portrait photo of a man", seed=7)
    b = render_still(loaded, "a portrait photo of a man", seed=7)
    c = render_still(loaded, "a portrait photo of a man", seed=8)
    ia, ib, ic = (np.asarray(r.images[0], dtype=np.float32) for r in (a, b, c))
    assert ia.shape == (64, 64, 3)
    assert np.isfinite(ia).all() and ia.std() > 0
    assert np.array_equal(ia, ib)
    assert np.abs(ia - ic).mean() > 0.5  # another seed, another image

    meta = a.metadata
    assert meta["seed"] == 7 and meta["preset"] == "tiny-stills-sdxl" and meta["kind"] == "still"
    assert meta["parameters"]["steps"] == 4 and meta["parameters"]["scheduler"] == "EulerDiscreteScheduler"
    base = meta["models"]["base"]
    assert base["id"] == "tiny-sdxl-base" and base["sha256"].startswith("sha256:")
    assert "unet/diffusion_pytorch_model.safetensors" in base["files"]
    assert meta["character"] is None and meta["runtime"]["device"] == "cpu"


def test_still_preset_scheduler_and_overrides(load_tiny, tiny_settings, tmp_path):
    import yaml

    from engine.pipelines.render import render_still

    data = yaml.safe_load((tiny_settings.presets_dir / "tiny-stills-sdxl.yaml").read_text())
    data.update(name="karras", scheduler="dpmpp_2m_karras")
    (tmp_path / "karras.yaml").write_text(yaml.safe_dump(data))
    loaded = load_tiny(str(tmp_path / "karras.yaml"))  # a preset file given by path
    assert type(loaded.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert loaded.pipe.scheduler.config.use_karras_sigmas
    r = render_still(loaded, "a man", seed=1, width=96, height=64, steps=2, output_type="np")
    assert r.images[0].shape == (64, 96, 3)
    assert r.metadata["parameters"]["width"] == 96 and r.metadata["parameters"]["steps"] == 2


def test_still_rejects_bad_inputs(load_tiny):
    from engine._core.errors import InputError
    from engine.pipelines.render import render_clip, render_still

    loaded = load_tiny("tiny-stills-sdxl")
    with pytest.raises(InputError, match="multiple of 8"):
        render_still(loaded, "a man", width=70)
    with pytest.raises(InputError, match="seed"):
        render_still(loaded, "a man", seed=-1)
    with pytest.raises(InputError, match="video preset"):
        render_clip(loaded, "a man")


def test_load_refuses_missing_weights(tmp_path, cpu_plan):
    from engine._core.errors import ModelNotFound
    from engine._core.settings import EngineSettings
    from engine.models.store import WeightsStore
    from engine.pipelines.loading import load_pipeline
    from engine.presets import load_preset

    settings = EngineSettings(home=tmp_path, weights_dir=tmp_path / "empty")
    preset = load_preset("tiny-stills-sdxl", settings.presets_dir)
    with pytest.raises(ModelNotFound, match="make_tiny_weights"):
        load_pipeline(preset, WeightsStore(settings), cpu_plan)
