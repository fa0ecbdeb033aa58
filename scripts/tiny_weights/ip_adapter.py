"""Tiny identity adapters in their ORIGINAL key layouts, shaped for the tiny SDXL UNet.

- `ip_adapter_faceid_plusv2_sdxl`: h94 IP-Adapter-FaceID-PlusV2 (SDXL). `image_proj.*` is a
  `ProjPlusModel` (id MLP + `FacePerceiverResampler`, depth 4, dim_head 64), `ip_adapter.*`
  holds `to_k_ip`/`to_v_ip` for every cross-attention and the LoRA (`to_{q,k,v,out}_lora`)
  for every attention, numbered in `unet.attn_processors` order as the original trainer did.
- `instantid_ip_adapter`: InstantID `ip-adapter` (`image_proj` = IP-Adapter-Plus `Resampler`
  with 16 learned queries over the 512-d face embedding, `ip_adapter` = `to_k_ip`/`to_v_ip`).

Both are written as safetensors with flat `image_proj.` / `ip_adapter.` prefixes, which is what
diffusers' `load_ip_adapter` reads from a `.safetensors` file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import sdxl
from ._common import seed_all

ID_EMBED_DIM = 512  # ArcFace (antelopev2 glintr100) embedding size
DIM_HEAD = 64  # diffusers' converter hard-codes 64 for these resamplers
FACEID_NUM_TOKENS = 4
FACEID_LORA_RANK = 4  # the real file uses 128
INSTANTID_NUM_QUERIES = 16
RESAMPLER_DEPTH = 4


class _Init:
    """Seeded tensor factory: `linear(out, in)` gets fan-in-scaled normals, norms get ~1 / ~0."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def randn(self, *shape, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=self.g) * std).contiguous()

    def linear(self, out_f: int, in_f: int) -> torch.Tensor:
        return self.randn(out_f, in_f, std=in_f**-0.5)

    def norm(self, prefix: str, dim: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1.0 + self.randn(dim, std=0.02), f"{prefix}.bias": self.randn(dim, std=0.02)}


def _perceiver_layers(init: _Init, prefix: str, dim: int, depth: int, heads: int, ff_mult: int = 4) -> dict:
    """`layers.{i}.0` = PerceiverAttention(norm1, norm2, to_q, to_kv, to_out); `layers.{i}.1` = FeedForward."""
    inner = heads * DIM_HEAD
    sd: dict[str, torch.Tensor] = {}
    for i in range(depth):
        p = f"{prefix}layers.{i}"
        sd |= init.norm(f"{p}.0.norm1", dim) | init.norm(f"{p}.0.norm2", dim)
        sd[f"{p}.0.to_q.weight"] = init.linear(inner, dim)
        sd[f"{p}.0.to_kv.weight"] = init.linear(2 * inner, dim)
        sd[f"{p}.0.to_out.weight"] = init.linear(dim, inner)
        sd |= init.norm(f"{p}.1.0", dim)
        sd[f"{p}.1.1.weight"] = init.linear(dim * ff_mult, dim)
        sd[f"{p}.1.3.weight"] = init.linear(dim, dim * ff_mult)
    return sd


def _attn_processor_sizes() -> list[tuple[str, int, int | None]]:
    """(name, hidden_size, cross_attention_dim or None) per attention of the tiny UNet, in diffusers' order."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**sdxl.UNET_CONFIG)
    blocks = list(unet.config.block_out_channels)
    out = []
    for name in unet.attn_processors:
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        cross = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
        out.append((name, hidden, cross))
    return out


def _ip_attn(init: _Init, lora_rank: int | None) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for key_id, (_, hidden, cross) in enumerate(_attn_processor_sizes()):
        if lora_rank:
            kv_in = cross or hidden
            for proj, in_f in (("to_q", hidden), ("to_k", kv_in), ("to_v", kv_in), ("to_out", hidden)):
                sd[f"ip_adapter.{key_id}.{proj}_lora.down.weight"] = init.randn(lora_rank, in_f, std=in_f**-0.5)
                sd[f"ip_adapter.{key_id}.{proj}_lora.up.weight"] = init.randn(hidden, lora_rank, std=0.02)
        if cross is not None:
            sd[f"ip_adapter.{key_id}.to_k_ip.weight"] = init.linear(hidden, cross)
            sd[f"ip_adapter.{key_id}.to_v_ip.weight"] = init.linear(hidden, cross)
    return sd


def _save(sd: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(sorted(sd.items())), str(path), metadata={"format": "pt"})


def build_faceid_plusv2_sdxl(out_dir: Path, seed: int) -> None:
    """Write `ip-adapter-faceid-plusv2_sdxl.safetensors` (tiny twin of h94's `.bin`)."""
    from . import clip_vision

    seed_all(seed)
    init = _Init(seed)
    cross = sdxl.CROSS_ATTENTION_DIM
    heads = max(1, cross // DIM_HEAD)
    sd = {
        "image_proj.proj.0.weight": init.linear(2 * ID_EMBED_DIM, ID_EMBED_DIM),
        "image_proj.proj.0.bias": init.randn(2 * ID_EMBED_DIM, std=0.02),
        "image_proj.proj.2.weight": init.linear(cross * FACEID_NUM_TOKENS, 2 * ID_EMBED_DIM),
        "image_proj.proj.2.bias": init.randn(cross * FACEID_NUM_TOKENS, std=0.02),
    }
    sd |= init.norm("image_proj.norm", cross)
    pr = "image_proj.perceiver_resampler."
    # proj_in takes the CLIP image encoder's penultimate hidden states.
    sd[pr + "proj_in.weight"] = init.linear(cross, clip_vision.HIDDEN)
    sd[pr + "proj_in.bias"] = init.randn(cross, std=0.02)
    sd[pr + "proj_out.weight"] = init.linear(cross, cross)
    sd[pr + "proj_out.bias"] = init.randn(cross, std=0.02)
    sd |= init.norm(pr + "norm_out", cross)
    sd |= _perceiver_layers(init, pr, cross, RESAMPLER_DEPTH, heads)
    sd |= _ip_attn(init, lora_rank=FACEID_LORA_RANK)
    _save(sd, Path(out_dir) / "ip-adapter-faceid-plusv2_sdxl.safetensors")


def build_instantid(out_dir: Path, seed: int) -> None:
    """Write InstantID's `ip-adapter.safetensors` (Resampler image_proj + to_k_ip/to_v_ip)."""
    seed_all(seed)
    init = _Init(seed)
    cross = sdxl.CROSS_ATTENTION_DIM
    dim = cross  # the real Resampler uses dim 1280 with output 2048; tiny keeps one width
    heads = max(1, dim // DIM_HEAD)
    sd = {"image_proj.latents": init.randn(1, INSTANTID_NUM_QUERIES, dim, std=dim**-0.5)}
    sd["image_proj.proj_in.weight"] = init.linear(dim, ID_EMBED_DIM)
    sd["image_proj.proj_in.bias"] = init.randn(dim, std=0.02)
    sd["image_proj.proj_out.weight"] = init.linear(cross, dim)
    sd["image_proj.proj_out.bias"] = init.randn(cross, std=0.02)
    sd |= init.norm("image_proj.norm_out", cross)
    sd |= _perceiver_layers(init, "image_proj.", dim, RESAMPLER_DEPTH, heads)
    sd |= _ip_attn(init, lora_rank=None)
    _save(sd, Path(out_dir) / "ip-adapter.safetensors")
