"""Tiny, randomly initialised twins of every real component, in the exact on-disk layouts.

`BUILDERS` maps the manifest's `source.builder` names to `build(out_dir, seed) -> None`.
Builders import torch/diffusers lazily and are deterministic from the seed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import clip_vision, controlnet, ip_adapter, sdxl, speed_lora, standin, wan, wan_extra


class BuilderUnavailable(RuntimeError):
    """A builder's module is not there (yet); the other components can still be built."""


def _arcface(filename: str) -> Callable[[Path, int], None]:
    """A builder for a tiny ArcFace pack whose recognition model has the real pack's file name."""

    def build(out_dir: Path, seed: int) -> None:
        # Imported on use (it needs torch's ONNX exporter) so the other builders work without it.
        try:
            from .arcface import build_tiny_arcface
        except ModuleNotFoundError as e:
            if e.name and e.name.endswith("tiny_weights.arcface"):
                raise BuilderUnavailable("scripts/tiny_weights/arcface.py is missing") from None
            raise

        build_tiny_arcface(Path(out_dir), seed=seed, filename=filename)

    return build


BUILDERS: dict[str, Callable[[Path, int], None]] = {
    "sdxl": sdxl.build,
    "ip_adapter_faceid_plusv2_sdxl": ip_adapter.build_faceid_plusv2_sdxl,
    "clip_vision_h": clip_vision.build,
    "instantid_controlnet": controlnet.build,
    "instantid_ip_adapter": ip_adapter.build_instantid,
    "arcface_glintr100": _arcface("glintr100.onnx"),  # antelopev2's recognition model
    "arcface_w600k_r50": _arcface("w600k_r50.onnx"),  # buffalo_l's
    "wan21_i2v": wan.build_wan21_i2v,
    "wan22_ti2v": wan.build_wan22_ti2v,
    "wan21_t2v": wan.build_wan21_t2v,
    "wan21_vace": wan_extra.build_wan21_vace,
    "wan21_flf2v": wan_extra.build_wan21_flf2v,
    "wan22_i2v_a14b": wan_extra.build_wan22_i2v_a14b,
    "wan22_t2v_a14b": standin.build_wan22_t2v_a14b,
    "standin_wan21_t2v_14b": standin.build_standin_wan21_t2v_14b,
    "standin_wan22_t2v_a14b_high": standin.build_standin_wan22_t2v_a14b_high,
    "standin_wan22_t2v_a14b_low": standin.build_standin_wan22_t2v_a14b_low,
    "lightx2v_wan21_t2v_14b": speed_lora.build_lightx2v_wan21_t2v_14b,
    "lightx2v_wan21_i2v_14b_480p": speed_lora.build_lightx2v_wan21_i2v_14b_480p,
    "lightning_wan22_t2v_a14b_high": speed_lora.build_lightning_wan22_t2v_a14b_high,
    "lightning_wan22_t2v_a14b_low": speed_lora.build_lightning_wan22_t2v_a14b_low,
}
