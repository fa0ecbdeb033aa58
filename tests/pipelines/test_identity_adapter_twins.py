"""The tiny identity adapters have the original key layouts and load with the real loaders."""

from __future__ import annotations

import pytest
import torch


def _latents(pipe, seed=0, **kw):
    return pipe(
        "a portrait", num_inference_steps=2, generator=torch.Generator().manual_seed(seed), output_type="latent", **kw
    ).images


def test_faceid_plusv2_loads_and_conditions(tiny_store):
    from diffusers import StableDiffusionXLPipeline
    from safetensors import safe_open

    adapter_dir = tiny_store.require("tiny-ip-adapter-faceid-plusv2-sdxl")
    weight_name = "ip-adapter-faceid-plusv2_sdxl.safetensors"
    with safe_open(adapter_dir / weight_name, "pt") as f:
        keys = set(f.keys())
    assert {k.split(".")[0] for k in keys} == {"image_proj", "ip_adapter"}
    assert "image_proj.perceiver_resampler.proj_in.weight" in keys
    assert "image_proj.perceiver_resampler.layers.3.0.to_kv.weight" in keys
    assert any(k.endswith("to_k_ip.weight") for k in keys) and any("_lora." in k for k in keys)

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_store.require("tiny-sdxl-base"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(str(adapter_dir), subfolder="", weight_name=weight_name, image_encoder_folder=None)
    proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert type(proj).__name__ == "IPAdapterFaceIDPlusImageProjection"

    # FaceID-Plus takes CLIP hidden states of the face crop from the tiny CLIP-H twin.
    from transformers import CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection.from_pretrained(tiny_store.require("tiny-clip-vision-h"))
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = encoder(pixels, output_hidden_states=True).hidden_states[-2]
    proj.clip_embeds = torch.cat([torch.zeros_like(hidden), hidden])[:, None]  # (2B, n_images, tokens, dim) under CFG
    proj.shortcut, proj.shortcut_scale = True, 1.0

    id_embed = torch.randn(1, 1, 512, generator=torch.Generator().manual_seed(1))
    embeds = [torch.cat([torch.zeros_like(id_embed), id_embed])]
    pipe.set_ip_adapter_scale(0.0)
    off = _latents(pipe, ip_adapter_image_embeds=embeds)
    pipe.set_ip_adapter_scale(1.0)
    on = _latents(pipe, ip_adapter_image_embeds=embeds)
    other = _latents(pipe, ip_adapter_image_embeds=[torch.cat([torch.zeros_like(id_embed), -id_embed])])
    assert torch.isfinite(on).all()
    assert (on - off).abs().mean() > 1e-3  # the identity changes the latents
    assert (on - other).abs().mean() > 1e-3  # and different identities differ


def test_instantid_twins_layout_and_forward(tiny_store):
    from diffusers import ControlNetModel, UNet2DConditionModel
    from safetensors import safe_open

    ip_path = tiny_store.require("tiny-instantid-ip-adapter") / "ip-adapter.safetensors"
    with safe_open(ip_path, "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    families = {".".join(k.split(".")[:2]) for k in sd if k.startswith("image_proj.")}
    assert {"image_proj.latents", "image_proj.proj_in", "image_proj.proj_out", "image_proj.norm_out"} <= families
    assert sd["image_proj.proj_in.weight"].shape[1] == 512  # ArcFace embedding in
    assert sd["image_proj.latents"].shape[1] == 16  # 16 identity tokens
    assert all(k.endswith(("to_k_ip.weight", "to_v_ip.weight")) for k in sd if k.startswith("ip_adapter."))

    unet = UNet2DConditionModel.from_pretrained(tiny_store.require("tiny-sdxl-base"), subfolder="unet")
    cn = ControlNetModel.from_pretrained(tiny_store.require("tiny-instantid-controlnet"))
    assert cn.config.cross_attention_dim == unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    tokens = torch.randn(1, 16, unet.config.cross_attention_dim, generator=g)
    added = {"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    keypoints = torch.rand(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        down, mid = cn(sample, 10, tokens, keypoints, added_cond_kwargs=added, return_dict=False)
        plain = unet(sample, 10, tokens, added_cond_kwargs=added).sample
        guided = unet(
            sample,
            10,
            tokens,
            added_cond_kwargs=added,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
    assert guided.shape == plain.shape == sample.shape
    assert (guided - plain).abs().mean() > 1e-4


@pytest.mark.parametrize("component", ["tiny-clip-vision-h"])
def test_clip_vision_twin_matches_h94_layout(tiny_store, component):
    from transformers import CLIPVisionModelWithProjection

    path = tiny_store.require(component)
    assert path.as_posix().endswith("models/image_encoder")
    model = CLIPVisionModelWithProjection.from_pretrained(path)
    assert model.config.image_size == 224 and model.config.patch_size == 14


def test_faceid_pickled_bin_layout_loads_the_same(tiny_store, tmp_path):
    """The real h94 file is a pickled `.bin` of {"image_proj": {...}, "ip_adapter": {...}}; diffusers reads it
    with torch.load(weights_only=True) and must build the same projection as from the safetensors twin."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    flat = load_file(
        tiny_store.require("tiny-ip-adapter-faceid-plusv2-sdxl") / "ip-adapter-faceid-plusv2_sdxl.safetensors"
    )
    nested = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        group, rest = key.split(".", 1)
        nested[group][rest] = value
    torch.save(nested, tmp_path / "ip-adapter-faceid-plusv2_sdxl.bin")

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_store.require("tiny-sdxl-base"), local_files_only=True)
    pipe.load_ip_adapter(
        str(tmp_path), subfolder="", weight_name="ip-adapter-faceid-plusv2_sdxl.bin", image_encoder_folder=None
    )
    proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert torch.equal(proj.proj_in.weight, flat["image_proj.perceiver_resampler.proj_in.weight"])
