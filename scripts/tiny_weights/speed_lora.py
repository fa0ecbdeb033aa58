"""Tiny twins of the step-distilled speed LoRAs, in their released key layouts, shaped for the tiny Wan transformers
(2 blocks, width 24, FFN 32, image tokens 24; see `wan.py`).

- lightx2v for Wan 2.1 (Kijai's `WanVideo_comfy/Lightx2v/lightx2v_*_cfg_step_distill_*rank128_bf16.safetensors`):
  original-Wan names under `diffusion_model.`: `blocks.{i}.{self_attn,cross_attn}.{q,k,v,o}.lora_{down,up}.weight`
  and `ffn.{0,2}.lora_{down,up}.weight`, each with a `.diff_b` (bias delta), `norm_q.diff` / `norm_k.diff` (norm
  deltas, which diffusers drops); the I2V file adds `cross_attn.{k_img,v_img}` and `cross_attn.norm_k_img.diff`.
  No `.alpha` (scale 1), rank 128, bf16.
- Wan2.2-Lightning T2V A14B V1.1 (`lightx2v/Wan2.2-Lightning/Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1/
  {high,low}_noise_model.safetensors`): the same `diffusion_model.` names for attention and FFN, one `.alpha` per
  layer (scale alpha / rank, as the Lightning repo merges it), rank 64, float32 (its merge code asserts float32).

The files keep the release's names (and sub-folders), so `pipe.load_lora_weights` runs diffusers' own
`_convert_non_diffusers_wan_lora_to_diffusers` on them exactly as on the real files. Which extra keys a release
holds beyond these (time/text embedding, head, modulation) was not seen; the converter handles those separately.

Weights: down ~ N(0, 1/r), up ~ N(0, 0.1^2), so each delta is about the size of the tiny base weights and the
LoRA visibly moves the latents (a near-zero LoRA would leave the tests unable to see it).
"""

from __future__ import annotations

from pathlib import Path

from .wan import INNER_DIM

TINY_BLOCKS = 2  # wan._transformer's num_layers
FFN_DIM = 32  # wan._transformer's ffn_dim
UP_STD = 0.1
LIGHTX2V_RANK = 128
LIGHTNING_RANK = 64
LIGHTNING_ALPHA = 32.0  # the release's alpha value was not seen; 32 / 64 = 0.5 exercises the alpha scale

LIGHTX2V_T2V_FILE = "Lightx2v/lightx2v_T2V_14B_cfg_step_distill_v2_lora_rank128_bf16.safetensors"
LIGHTX2V_I2V_FILE = "Lightx2v/lightx2v_I2V_14B_480p_cfg_step_distill_rank128_bf16.safetensors"
LIGHTNING_DIR = "Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1"


def _layers(i2v: bool) -> list[tuple[str, int, int]]:
    """(original Wan layer name, in features, out features) of one block's linear layers."""
    d = INNER_DIM
    out = [(f"self_attn.{p}", d, d) for p in "qkvo"] + [(f"cross_attn.{p}", d, d) for p in "qkvo"]
    if i2v:
        out += [("cross_attn.k_img", d, d), ("cross_attn.v_img", d, d)]  # the tiny added_kv_proj_dim is 24
    return out + [("ffn.0", d, FFN_DIM), ("ffn.2", FFN_DIM, d)]


def lightx2v_state_dict(seed: int, i2v: bool, rank: int = LIGHTX2V_RANK) -> dict:
    """A random state dict in the layout of Kijai's lightx2v extractions (bias and norm deltas, no alpha), bf16."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(TINY_BLOCKS):
        pre = f"diffusion_model.blocks.{i}"
        for name, fan_in, fan_out in _layers(i2v):
            sd[f"{pre}.{name}.lora_down.weight"] = torch.randn(rank, fan_in, generator=g) / rank**0.5
            sd[f"{pre}.{name}.lora_up.weight"] = torch.randn(fan_out, rank, generator=g) * UP_STD
            sd[f"{pre}.{name}.diff_b"] = torch.randn(fan_out, generator=g) * 0.05
        norms = ["self_attn.norm_q", "self_attn.norm_k", "cross_attn.norm_q", "cross_attn.norm_k"]
        for norm in norms + (["cross_attn.norm_k_img"] if i2v else []):
            sd[f"{pre}.{norm}.diff"] = torch.randn(INNER_DIM, generator=g) * 0.05
    return {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}


def lightning_state_dict(seed: int, rank: int = LIGHTNING_RANK, alpha: float = LIGHTNING_ALPHA) -> dict:
    """A random state dict in the Wan2.2-Lightning layout (`.alpha` per layer, no deltas), float32."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(TINY_BLOCKS):
        pre = f"diffusion_model.blocks.{i}"
        for name, fan_in, fan_out in _layers(i2v=False):
            sd[f"{pre}.{name}.lora_down.weight"] = torch.randn(rank, fan_in, generator=g) / rank**0.5
            sd[f"{pre}.{name}.lora_up.weight"] = torch.randn(fan_out, rank, generator=g) * UP_STD
            sd[f"{pre}.{name}.alpha"] = torch.tensor(alpha)
    return sd


def _writer(filename: str, make, offset: int):
    """`offset` keeps twins built from the same manifest seed apart (the real files differ)."""

    def build(out_dir: Path, seed: int) -> None:
        from safetensors.torch import save_file

        path = Path(out_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(make(seed * 10 + offset), str(path))

    return build


build_lightx2v_wan21_t2v_14b = _writer(LIGHTX2V_T2V_FILE, lambda s: lightx2v_state_dict(s, i2v=False), 3)
build_lightx2v_wan21_i2v_14b_480p = _writer(LIGHTX2V_I2V_FILE, lambda s: lightx2v_state_dict(s, i2v=True), 4)
build_lightning_wan22_t2v_a14b_high = _writer(f"{LIGHTNING_DIR}/high_noise_model.safetensors", lightning_state_dict, 5)
build_lightning_wan22_t2v_a14b_low = _writer(f"{LIGHTNING_DIR}/low_noise_model.safetensors", lightning_state_dict, 6)
