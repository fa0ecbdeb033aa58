"""Validation during training: render the validation prompts with the current LoRA and score their likeness.

Loss says how well the model denoises the training images, not whether renders look like the character (an
overfitted LoRA reaches low loss and copies the photos' backgrounds, an underfitted one has the right loss curve
but a stranger's face). So every `validate_every` steps the prompts are rendered (seeded, `validation_steps`
steps, the training pipeline with its LoRA active; Wan renders short clips, scored frame by frame: `clip_likeness`)
and scored by the consistency scorer (`engine.scoring.stills.score_still`) against the character; the result is the
best-likeness checkpoint.

Selection rule (`select_best`): the highest likeness wins; equal likeness goes to the lower mean loss since the
previous validation, then to the later step. When no validation found a face (or none ran), the result is the
last step: the per-step loss is single-batch noise, so its lowest value says little about the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Validation:
    """One validation: its step, the mean loss since the last one, the likeness (percent; None: no face found)."""

    step: int
    loss: float
    likeness: float | None
    scores: tuple[float | None, ...] = ()

    def as_dict(self) -> dict:
        return {"step": self.step, "loss": self.loss, "likeness": self.likeness, "scores": list(self.scores)}

    @classmethod
    def from_dict(cls, d: dict) -> Validation:
        return cls(int(d["step"]), float(d["loss"]), d.get("likeness"), tuple(d.get("scores") or ()))


def render_validation(pipe, prompts: Sequence[str], *, resolution: int, steps: int, seed: int, guidance: float, **kw):
    """RGB uint8 renders of `prompts` (one each, seed `seed + i`) with whatever adapters `pipe` has active: images,
    or (F, H, W, 3) clips from a video pipeline (`kw`: its extra arguments, such as `num_frames`)."""
    import torch

    renders = []
    for i, prompt in enumerate(prompts):
        g = torch.Generator("cpu").manual_seed(seed + i)
        out = pipe(
            prompt=prompt,
            num_inference_steps=steps,
            guidance_scale=guidance,
            width=resolution,
            height=resolution,
            generator=g,
            output_type="np",
            **kw,
        )
        first = out.frames[0] if hasattr(out, "frames") else out.images[0]
        renders.append((np.clip(np.asarray(first), 0.0, 1.0) * 255).round().astype(np.uint8))
    return renders


def likeness(images: Sequence[np.ndarray], reference, analyzer) -> tuple[float | None, tuple[float | None, ...]]:
    """(mean score in percent, per-image scores) of `images` against `reference`; a render without the face scores 0,
    and the mean is None when no render shows a face at all (nothing was measured)."""
    from engine.scoring.stills import score_still

    per, found = [], 0
    for img in images:
        s = score_still(img, [reference], analyzer)
        found += s.faces_found > 0
        per.append(s.score)
    if not found:
        return None, tuple(per)
    return round(float(np.mean([p or 0.0 for p in per])), 3), tuple(per)


def clip_likeness(clips, reference, analyzer) -> tuple[float | None, tuple[float | None, ...]]:
    """(mean over clips, per-clip scores): a clip scores the mean of its frames' likeness (`likeness`, a frame
    without the face counts 0) and None when no frame shows a face; the mean is None when no clip does."""
    per = tuple(likeness(list(clip), reference, analyzer)[0] for clip in clips)
    if all(p is None for p in per):
        return None, per
    return round(float(np.mean([p or 0.0 for p in per])), 3), per


def select_best(validations: Sequence[Validation]) -> Validation | None:
    """The validation whose checkpoint becomes the result (see the module docstring), or None: use the last step."""
    scored = [v for v in validations if v.likeness is not None]
    if not scored:
        return None
    return max(scored, key=lambda v: (v.likeness, -v.loss, v.step))


__all__ = ["Validation", "clip_likeness", "likeness", "render_validation", "select_best"]
