"""What a character LoRA file is: a diffusers-format `pytorch_lora_weights.safetensors`, checked before it is trusted.

The one check shared by the character library (`attach_lora`, which stores the bytes) and the pipelines
(`load_character_lora`, which loads them): both layers sit above `_core`, and neither may import the other.

A character LoRA is what `StableDiffusionXLPipeline.save_lora_weights(..., unet_lora_layers=...,
unet_lora_adapter_metadata=...)` (optionally with text-encoder layers) or `WanPipeline.save_lora_weights(
transformer_lora_layers=..., transformer_lora_adapter_metadata=...)` writes: every key is
`<component>.<module path>.<lora part>` and `__metadata__["lora_adapter_metadata"]` holds each component's peft
`LoraConfig` as `<component>.<field>` (diffusers reads `lora_alpha` from there: without it, it assumes alpha == r).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from engine._core.errors import InputError

# Target -> the pipeline components its keys may name (the first is the denoiser, which every LoRA must touch).
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "sdxl-unet": ("unet", "text_encoder", "text_encoder_2"),
    "wan-transformer": ("transformer",),
}
# The LoRA parts diffusers' loaders accept: its own format (`lora.down`/`lora.up`; `lora_linear_layer.down`/`.up`
# for text encoders, as `convert_state_dict_to_diffusers` writes them) and peft's (`lora_A`/`lora_B`).
DOWN_PARTS = ("lora.down.weight", "lora_linear_layer.down.weight", "lora_A.weight")
LORA_PARTS = (
    *DOWN_PARTS,
    "lora.up.weight",
    "lora.up.bias",
    "lora_linear_layer.up.weight",
    "lora_linear_layer.up.bias",
    "lora_B.weight",
    "lora_B.bias",
)
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
MAX_LORA_HEADER = 16 * 1024**2
MAX_LORA_TENSORS = 20_000  # an SDXL LoRA over every linear layer of unet + both text encoders is ~5,000


@dataclass
class LoraFileSummary:
    """What a LoRA file holds: the components it touches, its rank and alpha per component, and whether it carries
    diffusers' adapter metadata (the only place alpha can come from when it differs from the rank)."""

    target: str
    components: list[str]
    rank: dict[str, int] = field(default_factory=dict)
    alpha: dict[str, float] = field(default_factory=dict)
    has_metadata: bool = False
    tensors: int = 0


def _header(data: bytes, what: str) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 8:
        raise InputError(f"{what} is not a safetensors file (too short): pass the trained LoRA file")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > MAX_LORA_HEADER or 8 + n > len(data):
        raise InputError(f"{what} is not a valid safetensors file (header length {n}): pass the trained LoRA file")
    try:
        header = json.loads(bytes(data[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError(
            f"{what} is not a valid safetensors file (header is not JSON): pass the trained LoRA file"
        ) from None
    if not isinstance(header, dict):
        raise InputError(f"{what} is not a valid safetensors file (header is not an object): pass the LoRA file")
    return header


def read_lora_file(data: bytes, target: str, *, what: str = "LoRA data") -> LoraFileSummary:
    """Check that `data` is a diffusers-format LoRA for `target` and summarise it. Raises one-line `InputError`s.

    Args:
        data (`bytes`): the `.safetensors` file.
        target (`str`): `"sdxl-unet"` or `"wan-transformer"` (`LORA_TARGETS`).
        what (`str`, *optional*): how errors name the data.
    """
    from safetensors import SafetensorError, deserialize

    if target not in LORA_TARGETS:
        raise InputError(f"LoRA target {str(target)[:40]!r} is unknown: use one of {', '.join(LORA_TARGETS)}")
    header = _header(data, what)
    try:
        deserialize(bytes(data))  # the reference parser: dtypes, offsets, sizes
    except (SafetensorError, ValueError, TypeError, OverflowError, KeyError) as e:
        raise InputError(
            f"{what} is not a valid safetensors file ({str(e)[:80]}): pass the trained LoRA file"
        ) from None
    meta = header.pop("__metadata__", None) or {}
    if len(header) > MAX_LORA_TENSORS:
        raise InputError(f"{what} holds {len(header)} tensors, over the limit of {MAX_LORA_TENSORS}")
    if not header:
        raise InputError(f"{what} holds no tensors: pass the trained LoRA file")
    allowed = LORA_TARGETS[target]
    ranks: dict[str, int] = {}
    components: list[str] = []
    for key, entry in header.items():
        component, _, rest = key.partition(".")
        part = next((p for p in LORA_PARTS if rest.endswith("." + p)), None)
        if component not in allowed or part is None:
            raise InputError(
                f"{what} has key '{key[:120]}', which is not a diffusers {target} LoRA key "
                f"({'|'.join(allowed)}.<module>.lora_A/lora_B or lora.down/lora.up): save it with diffusers' "
                "save_lora_weights"
            )
        if component not in components:
            components.append(component)
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if part in DOWN_PARTS and isinstance(shape, list) and shape:
            ranks.setdefault(component, int(shape[0]))
    if allowed[0] not in components:
        raise InputError(f"{what} has no {allowed[0]} weights: a {target} LoRA must adapt the {allowed[0]}")
    components.sort(key=allowed.index)  # the denoiser first, then the text encoders
    summary = LoraFileSummary(target=target, components=components, rank=ranks, tensors=len(header))
    raw = meta.get(METADATA_KEY) if isinstance(meta, dict) else None
    if raw:
        try:
            adapter_meta = json.loads(raw)
        except (ValueError, RecursionError):
            raise InputError(f"{what} has unreadable {METADATA_KEY} (not JSON): re-save it with diffusers") from None
        if not isinstance(adapter_meta, dict):
            raise InputError(f"{what} has unreadable {METADATA_KEY} (not an object): re-save it with diffusers")
        summary.has_metadata = True
        for component in components:
            r, alpha = adapter_meta.get(f"{component}.r"), adapter_meta.get(f"{component}.lora_alpha")
            if isinstance(r, int) and not isinstance(r, bool):
                summary.rank[component] = r
            if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
                summary.alpha[component] = float(alpha)
    return summary


def lora_file_metadata(data: bytes) -> dict[str, str]:
    """The file's `__metadata__` strings (empty when it has none). The file must have passed `read_lora_file`."""
    meta = _header(data, "LoRA data").get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


__all__ = ["LORA_TARGETS", "LoraFileSummary", "read_lora_file", "lora_file_metadata"]
