"""The exported LoRA files (diffusers and kohya) reload through diffusers into a fresh pipeline and match."""

from __future__ import annotations

import pytest
import torch
from training_helpers import latents as _latents
from training_helpers import spec as _spec

from engine.training import train_character_lora


@pytest.mark.parametrize("text_encoder", [False, True])
def test_exports_reload_in_a_fresh_pipeline_and_match(fresh_sdxl, ava, analyzer, tmp_path, text_encoder):
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
    from safetensors.torch import load_file

    loaded = fresh_sdxl()
    spec = _spec(steps=3, rank=4, alpha=11.0, lr=2e-2, train_text_encoder=text_encoder)  # alpha != r
    result = train_character_lora(loaded, spec, tmp_path / "run", character=ava, analyzer=analyzer,
                                  keep_adapter=True)  # fmt: skip
    trained = _latents(loaded.pipe)
    fresh = fresh_sdxl()
    base = _latents(fresh.pipe)
    assert not torch.allclose(trained, base, atol=1e-4)  # the LoRA changes the output (else the test proves nothing)
    fresh.pipe.load_lora_weights(str(result.paths["diffusers_dir"]), weight_name="pytorch_lora_weights.safetensors")
    torch.testing.assert_close(_latents(fresh.pipe), trained, atol=1e-5, rtol=1e-5)
    assert result.paths["diffusers_file"].read_bytes() == result.lora_bytes

    kohya = load_file(str(result.paths["kohya_file"]))
    assert all(k.startswith(("lora_unet_", "lora_te1_", "lora_te2_")) for k in kohya)
    assert any(k.startswith("lora_te2_") for k in kohya) == text_encoder
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {11.0}
    other = fresh_sdxl()
    other.pipe.load_lora_weights(str(result.paths["kohya_file"]))  # diffusers' own kohya converter
    torch.testing.assert_close(_latents(other.pipe), trained, atol=1e-5, rtol=1e-5)

    # kohya -> diffusers conversion gives back the trained weights (with alpha, i.e. the same effective delta)
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(dict(kohya))
    exported = load_file(str(result.paths["diffusers_file"]))
    for key, up in exported.items():
        if ".lora_B." in key and key.startswith("unet."):
            down = exported[key.replace(".lora_B.", ".lora_A.")]
            c_up, c_down = converted[key], converted[key.replace(".lora_B.", ".lora_A.")]
            scale = alphas[key.replace(".lora_B.weight", ".alpha")] / c_down.shape[0] if alphas else 1.0
            torch.testing.assert_close(c_up @ c_down * scale, up @ down * (11.0 / 4), atol=1e-6, rtol=1e-5)
