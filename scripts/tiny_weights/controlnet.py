"""Tiny InstantID IdentityNet (`tiny-instantid-controlnet`): a diffusers `ControlNetModel` folder whose
blocks mirror the tiny SDXL UNet (text_time added embeddings, same cross-attention width)."""

from __future__ import annotations

from pathlib import Path

from . import sdxl
from ._common import save, seed_all

# Four levels of stride-2 downsampling in the condition embedding: 8x, like the VAE.
CONDITIONING_CHANNELS = (8, 8, 16, 16)


def build(out_dir: Path, seed: int) -> None:
    """Write `ControlNetModel/{config.json,diffusion_pytorch_model.safetensors}` as in the InstantX/InstantID repo."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    seed_all(seed)
    unet = UNet2DConditionModel(**sdxl.UNET_CONFIG)
    seed_all(seed + 1)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS)
    # from_unet zero-initialises the output convolutions; give them weights so the tiny net actually conditions.
    import torch

    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        zeroed = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
        for mod in [*zeroed, controlnet.controlnet_cond_embedding.conv_out]:
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 0.05)
    save(controlnet, out_dir, "ControlNetModel")
