"""Runtime planning is a pure function of the machine and the preset's needs."""

from __future__ import annotations

import pytest

from engine._core.errors import DeviceError, InputError
from engine.runtime import DeviceInfo, plan_runtime, probe_device

CPU = DeviceInfo(cuda_available=False)


def gpu(free: float, bf16: bool = True, xformers: bool = False) -> DeviceInfo:
    return DeviceInfo(
        cuda_available=True,
        free_vram_gb=free,
        total_vram_gb=free,
        bf16_supported=bf16,
        xformers_available=xformers,
        name="test-gpu",
    )


def test_cpu_plan():
    plan = plan_runtime(40.0, device_info=CPU)
    assert (plan.device, plan.dtype, plan.attention, plan.offload) == ("cpu", "float32", "sdpa", "none")
    assert not plan.vae_tiling and not plan.vae_slicing


def test_cuda_requested_without_cuda_is_one_line_error():
    with pytest.raises(DeviceError) as e:
        plan_runtime(1.0, "cuda", device_info=CPU)
    assert "\n" not in str(e.value) and "--device cpu" in str(e.value)


def test_dtype_and_attention_follow_the_gpu():
    assert plan_runtime(1.0, device_info=gpu(80)).dtype == "bfloat16"
    assert plan_runtime(1.0, device_info=gpu(80, bf16=False)).dtype == "float16"
    assert plan_runtime(1.0, device_info=gpu(80)).attention == "sdpa"
    assert plan_runtime(1.0, device_info=gpu(80, xformers=True)).attention == "xformers"


@pytest.mark.parametrize(
    ("free", "needs", "offload", "tiling"),
    [
        (80.0, 40.0, "none", False),  # H100: Wan 14B fits
        (24.0, 24.0, "model", True),  # 4090 and Wan 2.2 5B: one sub-model at a time
        (12.0, 11.0, "model", True),  # 12 GB card and SDXL FaceID
        (8.0, 40.0, "sequential", True),  # 8 GB card and Wan 14B: layer by layer
    ],
)
def test_memory_plan_from_free_vram(free, needs, offload, tiling):
    plan = plan_runtime(needs, device_info=gpu(free))
    assert plan.device == "cuda" and plan.offload == offload and plan.vae_tiling is tiling
    assert plan.reason


def test_overrides_win():
    plan = plan_runtime(1.0, device_info=gpu(80), offload="sequential", dtype="float16", vae_tiling=False)
    assert (plan.offload, plan.dtype, plan.vae_tiling) == ("sequential", "float16", False)
    assert plan_runtime(40.0, "cpu", device_info=gpu(80)).device == "cpu"
    # a known largest component decides whether model offload fits
    assert plan_runtime(20.0, device_info=gpu(12), largest_component_gb=5.0).offload == "model"
    assert plan_runtime(20.0, device_info=gpu(12), largest_component_gb=15.0).offload == "sequential"


def test_impossible_overrides_are_input_errors():
    with pytest.raises(InputError, match="needs a CUDA device"):
        plan_runtime(1.0, device_info=CPU, offload="model")
    with pytest.raises(InputError, match="xformers"):
        plan_runtime(1.0, device_info=gpu(80), attention="xformers")


def test_probe_on_this_machine_plans_something_valid():
    info = probe_device()
    plan = plan_runtime(0.1, device_info=info)
    assert plan.device == ("cuda" if info.cuda_available else "cpu")
    assert plan.model_dump()["needs_gb"] == 0.1


def test_apply_cpu_plan_to_a_real_pipeline(tmp_path):
    """apply_plan on CPU places a (tiny, randomly initialised) diffusers pipeline and enables VAE tiling."""
    import sys

    import torch

    from engine._core.settings import repo_root
    from engine.runtime import apply_plan

    sys.path.insert(0, str(repo_root() / "scripts"))
    from tiny_weights import BUILDERS

    BUILDERS["wan21_t2v"](tmp_path, 0)
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tmp_path, local_files_only=True)
    plan = plan_runtime(0.1, device_info=CPU, vae_tiling=True)
    assert apply_plan(pipe, plan) is pipe
    assert pipe.vae.use_tiling and pipe.device == torch.device("cpu")
