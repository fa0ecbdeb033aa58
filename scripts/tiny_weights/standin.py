"""Tiny twins for Stand-In: its checkpoints in the release's torch-pickle layout, and a Wan 2.2 T2V A14B pipeline.

- `standin_wan21_t2v_14b`, `standin_wan22_t2v_a14b_high`, `standin_wan22_t2v_a14b_low`: a real torch pickle
  (`torch.save`) named as the release names it, holding `blocks.{i}.self_attn.{q,k,v}_loras.{down,up}.weight`
  at rank 128 for the tiny Wan transformer (2 blocks, width 24; see `wan.py`). The 2.1 file is a plain dict, the
  2.2 pair is wrapped in `{"state_dict": ...}`: the release's loader accepts both. The store converts them to
  safetensors right after they are written, as it does after a download.
- `wan22_t2v_a14b` (`tiny-wan22-t2v-a14b`): `WanPipeline` with `transformer` (high-noise expert), `transformer_2`
  (low-noise expert, other weights) and `boundary_ratio` 0.875, the Wan2.2-T2V-A14B-Diffusers layout (Wan 2.1 VAE).

Weights: down ~ N(0, 1/r) as Stand-In initialises it; up ~ N(0, 0.5) instead of Stand-In's zeros, so the tiny
LoRA changes the reference stream (a zero LoRA would leave tests unable to see it).
"""

from __future__ import annotations

from pathlib import Path

from ._common import save, seed_all, t5_tokenizer
from .wan import INNER_DIM, _scheduler, _text_encoder, _transformer, _vae21

RANK = 128
TINY_BLOCKS = 2  # wan._transformer's num_layers
UP_STD = 0.5


def standin_state_dict(seed: int, blocks: int = TINY_BLOCKS, dim: int = INNER_DIM, rank: int = RANK) -> dict:
    """A random state dict in the release's layout (what `torch.load` of a Stand-In `.ckpt` returns)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(blocks):
        for proj in "qkv":
            sd[f"blocks.{i}.self_attn.{proj}_loras.down.weight"] = torch.randn(rank, dim, generator=g) / rank
            sd[f"blocks.{i}.self_attn.{proj}_loras.up.weight"] = torch.randn(dim, rank, generator=g) * UP_STD
    return sd


def _ckpt_builder(filename: str, wrapped: bool, offset: int):
    """`offset` keeps the three twins apart at the same manifest seed (the real three checkpoints differ)."""

    def build(out_dir: Path, seed: int) -> None:
        import torch

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        sd = standin_state_dict(seed * 10 + offset)
        torch.save({"state_dict": sd} if wrapped else sd, out / filename)

    return build


build_standin_wan21_t2v_14b = _ckpt_builder("Stand-In_wan2.1_T2V_14B.ckpt", wrapped=False, offset=0)
build_standin_wan22_t2v_a14b_high = _ckpt_builder("Stand-In_wan2.2_T2V_A14B_high.ckpt", wrapped=True, offset=1)
build_standin_wan22_t2v_a14b_low = _ckpt_builder("Stand-In_wan2.2_T2V_A14B_low.ckpt", wrapped=True, offset=2)


def build_wan22_t2v_a14b(out_dir: Path, seed: int) -> None:
    from diffusers import WanPipeline

    tokenizer = t5_tokenizer()
    seed_all(seed)
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=_text_encoder(tokenizer, seed + 2),
        vae=_vae21(seed + 1),
        transformer=_transformer(seed, in_channels=16, out_channels=16),
        transformer_2=_transformer(seed + 5, in_channels=16, out_channels=16),
        scheduler=_scheduler(flow_shift=3.0),
        boundary_ratio=0.875,
    )
    save(pipe, out_dir)
