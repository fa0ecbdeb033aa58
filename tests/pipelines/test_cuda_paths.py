"""The runtime's CUDA branches on the tiny twins: bf16/fp16, each offload plan, the ArcFace pack on the CUDA provider.

Marked `gpu`: skipped (with the reason) on machines without CUDA, such as CI; run on a lent GPU or a workstation
(`pytest -m gpu`). The same code paths run on CPU elsewhere in the suite.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("offload", ["none", "model", "sequential"])
def test_tiny_sdxl_renders_on_cuda_with_each_offload_plan(tiny_settings, tiny_store, offload):
    from engine.pipelines.loading import load_pipeline
    from engine.pipelines.render import render_still
    from engine.presets import load_preset
    from engine.runtime import plan_runtime

    plan = plan_runtime(0.1, "cuda", offload=offload)
    assert plan.device == "cuda" and plan.dtype in ("bfloat16", "float16")
    loaded = load_pipeline(load_preset("tiny-stills-sdxl", tiny_settings.presets_dir), tiny_store, plan)
    a = render_still(loaded, "a portrait", seed=3, output_type="latent").images[0]
    b = render_still(loaded, "a portrait", seed=3, output_type="latent").images[0]
    assert a.is_cuda or offload != "none"
    assert np.isfinite(a.float().cpu().numpy()).all() and (a == b).all()  # seeded on CPU: reproducible


def test_tiny_wan_clip_renders_on_cuda(tiny_settings, tiny_store):
    from engine.pipelines.loading import load_pipeline
    from engine.pipelines.render import render_clip
    from engine.presets import load_preset
    from engine.runtime import plan_runtime

    plan = plan_runtime(0.1, "cuda")
    loaded = load_pipeline(load_preset("tiny-video-wan21-t2v-1.3b", tiny_settings.presets_dir), tiny_store, plan)
    clip = render_clip(loaded, "a person walks", seed=1)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape[0] == loaded.preset.num_frames


def test_arcface_twin_runs_on_the_cuda_provider(tiny_settings, faces_dir):
    import onnxruntime as ort

    from engine.identity.images import load_image
    from engine.identity.registry import get_analyzer

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed here (make install-gpu)")
    arc = get_analyzer("tiny-arcface-antelopev2-glintr100", settings=tiny_settings)
    faces = arc.analyze(load_image(faces_dir / "obama.jpg"))
    assert faces and faces[0].embedding.shape == (512,)
    assert "CUDAExecutionProvider" in arc._rec.session.get_providers()
