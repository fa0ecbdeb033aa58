"""Writing the trained LoRA in the two formats other tools read.

- diffusers (`pytorch_lora_weights.safetensors`, SDXL or Wan), through the pipeline class's own
  `save_lora_weights`, with each model's peft config as adapter metadata: without it a loader assumes alpha == r,
  and a LoRA trained with any other alpha would load at the wrong strength. This file is what a character's `.flx`
  stores, verbatim.
- kohya / A1111 (`lora_unet_...`, `lora_te1_...`, `lora_te2_...` keys with `.alpha` tensors), through diffusers'
  `convert_state_dict_to_kohya`. That converter writes `alpha = r` for every module, so the real alpha is put back
  here. Module names stay in diffusers' layout (`lora_unet_down_blocks_1_attentions_0_...`), as diffusers' own
  DreamBooth script writes them: diffusers and ComfyUI map these names; tools that only know the original SGM block
  names (`input_blocks_4_1`) do not.

Both are written to a temp name and renamed into place (`engine._core.atomic`), with a canonical header, so the
same weights always give the same bytes (and `.flx` hash).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ADAPTER_NAME = "flx_character"
# The modules a character LoRA adapts (attention projections): SDXL UNet, CLIP text encoders, Wan transformer.
UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def peft_layers(model, adapter: str = ADAPTER_NAME) -> dict:
    """The adapter's tensors in peft naming (`down_blocks.0....lora_A.weight`), adapter name stripped."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=adapter)


def export_diffusers(
    pipeline_cls,
    out_dir: str | os.PathLike,
    denoiser,
    text_encoders=(),
    *,
    slot: str = "unet",
    adapter: str = ADAPTER_NAME,
) -> Path:
    """Write `out_dir/pytorch_lora_weights.safetensors` with `pipeline_cls.save_lora_weights` (metadata included).
    `slot` is the denoiser's name in that pipeline: `unet` (SDXL) or `transformer` (Wan, whose experts share it)."""
    from diffusers.utils import convert_state_dict_to_diffusers

    from engine._core.atomic import atomic_write_bytes, ensure_writable_dir

    out = ensure_writable_dir(out_dir, what="LoRA folder")
    kwargs = {}
    for name, model in zip((slot, "text_encoder", "text_encoder_2"), (denoiser, *text_encoders)):
        kwargs[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(peft_layers(model, adapter))
        kwargs[f"{name}_lora_adapter_metadata"] = model.peft_config[adapter].to_dict()
    with tempfile.TemporaryDirectory(dir=out, prefix=".flx-export-") as tmp:
        pipeline_cls.save_lora_weights(tmp, weight_name=DIFFUSERS_WEIGHT_NAME, **kwargs)
        data = canonical_safetensors((Path(tmp) / DIFFUSERS_WEIGHT_NAME).read_bytes())
    return atomic_write_bytes(out / DIFFUSERS_WEIGHT_NAME, data)


def _canonical_meta(value: str) -> str:
    """A metadata value with JSON inside (diffusers' adapter metadata) re-dumped with sorted keys and sorted
    string lists (peft keeps `target_modules` as a set, whose order changes from process to process)."""
    try:
        obj = json.loads(value)
    except ValueError:
        return value

    def norm(x):
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items()}
        if isinstance(x, list) and all(isinstance(v, str) for v in x):
            return sorted(x)
        return x

    return json.dumps(norm(obj), sort_keys=True, indent=2)


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with a canonical header (sorted tensor names and metadata), so that the same
    weights always give the same bytes and sha256 (safetensors writes metadata in hash-map order)."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    meta = {k: _canonical_meta(v) for k, v in sorted((header.pop("__metadata__", None) or {}).items())}
    out_header: dict = {"__metadata__": meta} if meta else {}
    chunks, offset = [], 0
    for name in sorted(header):
        t = header[name]
        start, end = t["data_offsets"]
        chunks.append(body[start:end])
        out_header[name] = {"dtype": t["dtype"], "shape": t["shape"], "data_offsets": [offset, offset + end - start]}
        offset += end - start
    raw = json.dumps(out_header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)


def kohya_state_dict(unet, text_encoders=(), *, alpha: float, adapter: str = ADAPTER_NAME) -> dict:
    """The LoRA as kohya tensors (`lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, `.alpha`)."""
    import torch
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    peft_sd = {f"unet.{k}": v for k, v in peft_layers(unet, adapter).items()}
    for prefix, te in zip(("text_encoder", "text_encoder_2"), text_encoders):
        peft_sd.update({f"{prefix}.{k}": v for k, v in peft_layers(te, adapter).items()})
    kohya = convert_state_dict_to_kohya(peft_sd)
    for k in kohya:
        if k.endswith(".alpha"):  # the converter writes r here; the real alpha sets the strength
            kohya[k] = torch.tensor(float(alpha), dtype=torch.float32)
    return {k: v.detach().contiguous().cpu() for k, v in kohya.items()}


def export_kohya(
    path: str | os.PathLike, unet, text_encoders=(), *, rank: int, alpha: float, metadata: dict | None = None
) -> Path:
    """Write the kohya / A1111 safetensors file at `path` (metadata: `ss_network_dim`, `ss_network_alpha`, ...)."""
    from safetensors.torch import save

    from engine._core.atomic import atomic_write_bytes

    tensors = kohya_state_dict(unet, text_encoders, alpha=alpha)
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": f"{alpha:g}",
        "ss_base_model_version": "sdxl_base_v1-0",
        **{k: str(v) for k, v in (metadata or {}).items()},
    }
    return atomic_write_bytes(path, canonical_safetensors(save(tensors, metadata=meta)))


__all__ = [
    "ADAPTER_NAME",
    "DIFFUSERS_WEIGHT_NAME",
    "TEXT_ENCODER_TARGETS",
    "UNET_TARGETS",
    "canonical_safetensors",
    "export_diffusers",
    "export_kohya",
    "kohya_state_dict",
    "peft_layers",
]
