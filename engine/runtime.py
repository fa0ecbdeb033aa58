"""Runtime planning: which device, dtype, attention kernel and memory strategy to run a preset with.

`plan_runtime` is a pure function of what the machine offers (`DeviceInfo`) and what the preset
needs, so every branch is unit-testable without a GPU; `probe_device()` fills `DeviceInfo` from
torch when the caller does not. `apply_plan` then makes the matching diffusers/accelerate calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from engine._core.errors import DeviceError, InputError

Device = Literal["cuda", "cpu"]
DType = Literal["bfloat16", "float16", "float32"]
Attention = Literal["xformers", "sdpa"]
Offload = Literal["none", "model", "sequential"]

# Headroom kept free on the GPU for activations, the CUDA context and fragmentation.
VRAM_MARGIN_GB = 1.5
# With model offload only one big sub-model sits on the GPU at a time; without a per-component
# figure we assume the largest is this share of the whole (UNet/transformer dominate).
LARGEST_COMPONENT_SHARE = 0.7


@dataclass(frozen=True)
class DeviceInfo:
    """What the machine offers. `free_vram_gb` is None without CUDA."""

    cuda_available: bool
    free_vram_gb: float | None = None
    total_vram_gb: float | None = None
    bf16_supported: bool = False
    xformers_available: bool = False
    name: str = "cpu"


def probe_device() -> DeviceInfo:
    """Ask torch (and importlib for xformers) what this machine has. Called at plan time, never at import."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return DeviceInfo(cuda_available=False)
    free, total = torch.cuda.mem_get_info()
    return DeviceInfo(
        cuda_available=True,
        free_vram_gb=free / 2**30,
        total_vram_gb=total / 2**30,
        bf16_supported=bool(torch.cuda.is_bf16_supported()),
        xformers_available=importlib.util.find_spec("xformers") is not None,
        name=torch.cuda.get_device_name(0),
    )


class RuntimePlan(BaseModel):
    """How to place and run a pipeline. Serialisable into output metadata."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: Device = Field(description="Where the denoiser runs.")
    dtype: DType = Field(description="Weights/compute dtype of the big models.")
    attention: Attention = Field(description="Attention kernel: xformers or torch scaled_dot_product_attention.")
    offload: Offload = Field(description="none: all on GPU; model: one sub-model at a time; sequential: per layer.")
    vae_tiling: bool = Field(description="Decode/encode in tiles (lower peak memory, large frames).")
    vae_slicing: bool = Field(description="Decode a batch one item at a time.")
    needs_gb: float = Field(ge=0, description="The preset's VRAM need without offload.")
    free_vram_gb: float | None = Field(default=None, description="Free GPU memory when planned.")
    device_name: str = Field(default="cpu", description="Human-readable device name.")
    reason: str = Field(default="", description="One line: why this memory plan.")

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def plan_runtime(
    needs_gb: float,
    requested_device: Literal["auto", "cuda", "cpu"] = "auto",
    *,
    device_info: DeviceInfo | None = None,
    dtype: DType | None = None,
    attention: Attention | None = None,
    offload: Offload | Literal["auto"] | None = None,
    vae_tiling: bool | None = None,
    largest_component_gb: float | None = None,
) -> RuntimePlan:
    """Choose a `RuntimePlan`.

    Args:
        needs_gb (`float`): VRAM the preset needs with everything on the GPU (`preset.vram_gb`).
        requested_device (`str`, defaults to `"auto"`): `auto` takes CUDA when present; `cuda` without CUDA
            raises `DeviceError`.
        device_info (`DeviceInfo`, *optional*): what the machine offers; probed with torch when omitted.
        dtype, attention, offload, vae_tiling (*optional*): overrides of the automatic choices.
        largest_component_gb (`float`, *optional*): VRAM of the biggest sub-model, to decide whether model
            offload fits; estimated as a share of `needs_gb` when omitted.
    """
    info = device_info if device_info is not None else probe_device()
    if requested_device not in ("auto", "cuda", "cpu"):
        raise InputError(f"unknown device '{requested_device}': use auto, cuda or cpu")
    if offload not in (None, "auto", "none", "model", "sequential"):
        raise InputError(f"unknown offload '{offload}': use none, model or sequential")
    if requested_device == "cuda" and not info.cuda_available:
        raise DeviceError("CUDA was requested but no CUDA device is available: use --device cpu or auto")
    use_cuda = info.cuda_available and requested_device != "cpu"

    if not use_cuda:
        if offload in ("model", "sequential"):
            raise InputError(f"offload '{offload}' needs a CUDA device: drop --offload or use --device cuda")
        if attention == "xformers":
            raise InputError("xformers attention needs a CUDA device: drop --attention or use --device cuda")
        return RuntimePlan(
            device="cpu",
            dtype=dtype or "float32",
            attention="sdpa",
            offload="none",
            vae_tiling=bool(vae_tiling),
            vae_slicing=False,
            needs_gb=needs_gb,
            device_name=info.name,
            reason="no CUDA device: everything runs on the CPU in float32",
        )

    if attention == "xformers" and not info.xformers_available:
        raise InputError("xformers attention was requested but xformers is not installed: pip install xformers")
    free = info.free_vram_gb if info.free_vram_gb is not None else 0.0
    largest = largest_component_gb if largest_component_gb is not None else needs_gb * LARGEST_COMPONENT_SHARE
    if offload in (None, "auto"):
        if free >= needs_gb + VRAM_MARGIN_GB:
            chosen: Offload = "none"
            reason = f"{free:.1f} GiB free >= {needs_gb:.1f} GiB needed: all on GPU"
        elif free >= largest + VRAM_MARGIN_GB:
            chosen = "model"
            reason = f"{free:.1f} GiB free < {needs_gb:.1f} GiB needed: model CPU offload"
        else:
            chosen = "sequential"
            reason = f"{free:.1f} GiB free < {largest:.1f} GiB largest model: sequential CPU offload (slow)"
    else:
        chosen = offload
        reason = f"offload '{offload}' requested"
    tiling = vae_tiling if vae_tiling is not None else chosen != "none"
    return RuntimePlan(
        device="cuda",
        dtype=dtype or ("bfloat16" if info.bf16_supported else "float16"),
        attention=attention or ("xformers" if info.xformers_available else "sdpa"),
        offload=chosen,
        vae_tiling=tiling,
        vae_slicing=chosen != "none",
        needs_gb=needs_gb,
        free_vram_gb=info.free_vram_gb,
        device_name=info.name,
        reason=reason,
    )


def apply_plan(pipe, plan: RuntimePlan):
    """Place `pipe` as planned (dtype is chosen at load time via `torch_dtype`). Returns `pipe`."""
    if plan.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=plan.device)
    elif plan.offload == "model":
        pipe.enable_model_cpu_offload(device=plan.device)
    else:
        pipe.to(plan.device)
    if plan.attention == "xformers":
        transformer = getattr(pipe, "transformer", None)
        if transformer is not None and hasattr(transformer, "set_attention_backend"):
            # Wan's attention goes through diffusers' dispatcher; UNets use the processor swap.
            transformer.set_attention_backend("xformers")
        else:
            pipe.enable_xformers_memory_efficient_attention()
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        if plan.vae_tiling and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
        if plan.vae_slicing and hasattr(vae, "enable_slicing"):
            vae.enable_slicing()
    return pipe


__all__ = ["DeviceInfo", "RuntimePlan", "apply_plan", "plan_runtime", "probe_device"]
