"""Small helpers shared by the training tests (a spec on the tiny SDXL twin, a seeded latent render)."""

from __future__ import annotations

import torch

from engine.training import TrainSpec


def spec(**kw) -> TrainSpec:
    """A few-step spec on the tiny SDXL twin, training on the character's reference crops."""
    base = dict(preset="tiny-stills-sdxl", source="refs", steps=6, rank=4, min_images=2, lr=1e-3,
                validate_every=1000, checkpoint_every=1000, validation_steps=2)  # fmt: skip
    return TrainSpec(**{**base, **kw})


def latents(pipe, seed: int = 3):
    """A seeded 3-step render in latent space (random tiny VAEs squash pixel differences)."""
    g = torch.Generator("cpu").manual_seed(seed)
    return pipe("photo of ohwx person", num_inference_steps=3, width=64, height=64, generator=g,
                output_type="latent").images  # fmt: skip
