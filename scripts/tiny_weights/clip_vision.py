"""Tiny CLIP ViT-H image encoder (`tiny-clip-vision-h`): the h94 `models/image_encoder` layout
(`config.json` + `model.safetensors`, `CLIPVisionModelWithProjection`), 224 px / patch 14 like the real one."""

from __future__ import annotations

from pathlib import Path

from ._common import save, seed_all

HIDDEN = 32
IMAGE_SIZE = 224
PATCH_SIZE = 14


def vision_config(hidden: int = HIDDEN, projection_dim: int = HIDDEN):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=37,
        projection_dim=projection_dim,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_act="gelu",
    )


def build(out_dir: Path, seed: int) -> None:
    """Write `models/image_encoder/{config.json,model.safetensors}` as in the h94/IP-Adapter repo."""
    from transformers import CLIPVisionModelWithProjection

    seed_all(seed)
    save(CLIPVisionModelWithProjection(vision_config()), out_dir, "models/image_encoder")
