"""One clip with Stand-In reference attention on the preset's loaded diffusers Wan pipeline.

It prepares the reference photos (Stand-In's crop, our face detector), VAE-encodes them with the pipeline's own
VAE, attaches Stand-In to each transformer (Wan 2.2: both experts, each with its own checkpoint and cache), runs
the reference pass once per expert, and hands the call to `pipelines.render.render_clip`, the single place that
seeds, runs and describes a render; it detaches in `finally`, so the loaded pipeline is stock again afterwards.

Presets say whether Stand-In weights were trained for their model (`reference.trained`: Wan 2.1 T2V 14B, Wan 2.2
T2V A14B, VACE 14B with the 2.1 checkpoint). Elsewhere (I2V, TI2V-5B) the attention runs untrained, only with
`experimental=True`, and the output says so (metadata `reference.experimental`, an `EngineWarning`).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from engine._core.errors import EngineWarning, InputError
from engine.presets import ReferenceDefaults, VideoPreset

from ..loading import LoadedPipeline
from ..render import ClipResult, _size_steps_guidance, render_clip

EXPERTS = ("transformer", "transformer_2")


@dataclass(frozen=True)
class PreparedReference:
    """A reference photo as the method takes it (`image`, 512x512 RGB), its weight, and what to record."""

    image: np.ndarray
    weight: float
    record: dict[str, Any]


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def prepare_references(
    references: Sequence[tuple[np.ndarray, float]],
    *,
    analyzer=None,
    background_masks: Sequence[np.ndarray | None] | None = None,
) -> list[PreparedReference]:
    """Crop each (RGB photo, weight) as Stand-In does, with our detector's largest face.

    Args:
        references (`Sequence[tuple[np.ndarray, float]]`): 1-4 (H x W x 3 uint8 RGB, weight in (0, 1]).
        analyzer (`FaceAnalyzer`, *optional*): the detector; default dlib HOG (boxes grown to SCRFD's extent).
            An insightface analyzer gives SCRFD boxes, Stand-In's own detector, used as they are.
        background_masks (*optional*): per reference, a 512x512 bool mask of the background to paint white (see
            `engine.adapters.standin.prepare_reference_image`); None keeps the background.
    """
    from engine.adapters.standin import MAX_REFERENCES, detector_box_to_scrfd, prepare_reference_image

    refs = list(references) if references is not None else []
    if not 1 <= len(refs) <= MAX_REFERENCES:
        raise InputError(f"give 1 to {MAX_REFERENCES} reference photos (got {len(refs)})")
    masks = list(background_masks) if background_masks is not None else [None] * len(refs)
    if len(masks) != len(refs):
        raise InputError(f"{len(masks)} background masks for {len(refs)} references: give one per reference")
    if analyzer is None:
        from engine.identity.registry import get_analyzer

        analyzer = get_analyzer()
    from engine.identity.dlib_backend import DlibFaceAnalyzer

    hog = isinstance(analyzer, DlibFaceAnalyzer)
    out = []
    for i, item in enumerate(refs):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InputError(f"reference {i + 1} must be an (image, weight) pair")
        image, weight = item
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 < weight <= 1.0:
            raise InputError(f"reference {i + 1}: weight must be a number in (0, 1] (got {weight!r})")
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"reference {i + 1} must be an (H, W, 3) uint8 RGB array (engine.identity.images)")
        faces = analyzer.detect(image) or analyzer.detect(image, upsample=1)  # small faces: one more octave
        face = max(faces, key=lambda f: f.area) if faces else None
        box = None
        if face is not None:
            box = detector_box_to_scrfd(face.box) if hog else tuple(float(v) for v in face.box)
        prepared = prepare_reference_image(image, box, background_mask=masks[i])
        out.append(
            PreparedReference(
                image=prepared,
                weight=float(weight),
                record={
                    "weight": float(weight),
                    "pixels_sha256": _sha256(image),
                    "size": [int(image.shape[1]), int(image.shape[0])],
                    "face_box": [round(float(v), 1) for v in face.box] if face is not None else None,
                    "crop_box": [round(float(v), 1) for v in box] if box is not None else None,
                    "background": "mask painted white" if masks[i] is not None else "kept",
                    "prepared_sha256": _sha256(prepared),
                },
            )
        )
    return out


def effective_reference_settings(
    preset: VideoPreset, strength, blocks, start, end, *, trained: bool
) -> ReferenceDefaults:
    """The preset's reference defaults with the clip's overrides, checked by the same model (one source of bounds)."""
    base = preset.reference or ReferenceDefaults(trained=False)
    data = base.model_dump()
    data.update(
        {
            k: v
            for k, v in {"strength": strength, "blocks": blocks, "start": start, "end": end}.items()
            if v is not None
        }
    )
    data["trained"] = trained
    try:
        return ReferenceDefaults.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "reference window"
        raise InputError(f"reference {key}: {str(err['msg']).replace('Value error, ', '')}") from None


def _checkpoint_record(loaded: LoadedPipeline, slot: str) -> dict[str, Any] | None:
    rec = loaded.models.get(slot)
    if rec is None:
        return None
    return {k: rec.get(k) for k in ("id", "sha256", "files", "converted_from", "unverified") if rec.get(k) is not None}


def render_reference_clip(
    loaded: LoadedPipeline,
    prompt: str,
    references: Sequence[tuple[np.ndarray, float]],
    negative_prompt: str | None = None,
    seed: int = 0,
    *,
    strength: float | None = None,
    blocks: Sequence[int] | None = None,
    start: float | None = None,
    end: float | None = None,
    experimental: bool = False,
    analyzer=None,
    background_masks: Sequence[np.ndarray | None] | None = None,
    image=None,
    num_frames: int | None = None,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    guidance_2: float | None = None,
    fps: int | None = None,
    character: dict[str, Any] | None = None,
    extra_metadata: dict[str, Any] | None = None,
    **render_kwargs,
) -> ClipResult:
    """Render one clip whose subject takes the face of the reference photos (Stand-In).

    Args:
        loaded (`LoadedPipeline`): a Wan video preset's pipeline (`load_pipeline`); presets with
            `reference.trained` bring their Stand-In checkpoints (`loaded.extras["reference"]`).
        prompt (`str`): what happens in the clip. Stand-In's advice: name the subject plainly ("a man").
        references (`Sequence[tuple[np.ndarray, float]]`): 1-4 (RGB photo, weight in (0, 1]), e.g. a front and a
            3/4 view; each reference's keys get the logit bias `log(strength * weight)`.
        strength (`float`, *optional*): 0 = the stock model exactly, 1 = Stand-In as published; preset default.
        blocks (`Sequence[int]`, *optional*): transformer blocks whose video queries see the reference.
        start, end (`float`, *optional*): the step window [start, end) as fractions of the steps.
        experimental (`bool`, defaults to False): run untrained on a model without Stand-In weights.
        analyzer (`FaceAnalyzer`, *optional*): face detector for the crop (default dlib HOG).
        background_masks (*optional*): see `prepare_references`.
        image (*optional*): the start frame, for image-to-video presets (experimental).
        character (`dict`, *optional*): `{"id", "version"}` of the character the photos belong to, for metadata.
        extra_metadata (`dict`, *optional*): merged into the metadata's `identity` record.
        Other arguments as in `render_clip` (`render_kwargs` go to it, e.g. `conditioning_frames`, `output_type`).

    Examples:

    ```py
    >>> loaded = load_pipeline(load_preset("video-wan21-t2v-14b-standin", presets_dir), store, plan)
    >>> clip = render_reference_clip(loaded, "a woman walks on a beach", [(load_image("ava.jpg"), 1.0)], seed=3)
    ```
    """
    from engine.adapters.standin import attach, encode_references
    from engine.processors.attention_wan import video_grid

    preset = loaded.preset
    if not isinstance(preset, VideoPreset):
        raise InputError(f"preset '{preset.name}' makes stills: reference attention needs a Wan video preset")
    trained_weights = loaded.extras.get("reference") or {}
    trained = bool(preset.reference is not None and preset.reference.trained and trained_weights)
    if not trained and not experimental:
        raise InputError(
            f"preset '{preset.name}' has no trained Stand-In weights (they exist for Wan 2.1 T2V 14B, Wan 2.2 T2V "
            "A14B and VACE 14B): use video-wan21-t2v-14b-standin, or pass experimental=True to run it untrained"
        )
    settings = effective_reference_settings(preset, strength, blocks, start, end, trained=trained)
    w, h, n_steps, _ = _size_steps_guidance(preset, prompt, width, height, steps, guidance)
    frames_n = num_frames if num_frames is not None else preset.num_frames
    if not isinstance(frames_n, int) or frames_n < 5 or (frames_n - 1) % 4:
        raise InputError(f"num_frames must be 4k+1 and at least 5, e.g. 9, 49, 81 (got {frames_n!r})")
    prepared = prepare_references(references, analyzer=analyzer, background_masks=background_masks)

    pipe = loaded.pipe
    experts = [(name, getattr(pipe, name, None)) for name in EXPERTS]
    experts = [(name, t) for name, t in experts if t is not None]
    grid = video_grid(experts[0][1], pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal, frames_n, h, w)
    ref_weights = [p.weight for p in prepared]
    if not trained:
        warnings.warn(
            f"reference attention on preset '{preset.name}' is UNTRAINED (experimental): no Stand-In weights exist "
            "for this model, so identity is not reliable; the output's metadata says so",
            EngineWarning,
            stacklevel=2,
        )
    user_callback = render_kwargs.pop("callback_on_step_end", None)
    if user_callback is not None and not callable(user_callback):
        raise InputError("callback_on_step_end must be a function (pipeline, step, timestep, callback_kwargs)")
    handles = []
    try:
        latents = None
        if settings.strength > 0.0:
            latents = encode_references(pipe.vae, [p.image for p in prepared])
        window = (settings.start, settings.end)
        for name, transformer in experts:
            weights = trained_weights.get(name) if trained else None
            if trained and weights is None:
                raise InputError(f"preset '{preset.name}' names no Stand-In checkpoint for its {name}: add it")
            handle = attach(
                transformer,
                weights,
                strength=settings.strength,
                blocks=settings.blocks,
                window=window,
                experimental=not trained,
            )
            handles.append(handle)
            handle.set_step(0, n_steps)
            if latents is not None:
                handle.prepare(latents, ref_weights, grid)

        def step_window(pipeline, step, timestep, callback_kwargs):
            for hd in handles:  # the switch for the next step
                hd.set_step(step + 1, n_steps)
            if user_callback is not None:
                return user_callback(pipeline, step, timestep, callback_kwargs)
            return callback_kwargs

        identity = {
            "method": "stand-in",
            "trained": trained,
            "experimental": not trained,
            **(
                {}
                if trained
                else {"note": f"untrained: no Stand-In weights exist for {preset.components.base}; experimental"}
            ),
            "strength": settings.strength,
            "blocks": list(settings.blocks) if settings.blocks is not None else "all",
            "window": [settings.start, settings.end],
            "weighting": "logit bias log(strength x weight) on each reference's keys (1 = Stand-In as published)",
            "checkpoints": {
                name: (_checkpoint_record(loaded, slot) if trained else None)
                for (name, _), slot in zip(experts, ("reference", "reference_2"))
            },
            "references": [p.record for p in prepared],
            "reference_size": int(prepared[0].image.shape[0]),
            "positions": "frame -1, rows H.., columns W.. past the post-patch video grid",
            "video_grid": [int(v) for v in grid],
            "cache": "per expert, computed once before the first step; reused for every step and both CFG branches",
            "preparation": {
                "detector": type(analyzer).__name__ if analyzer is not None else "DlibFaceAnalyzer",
                "crop": "largest face, square 1.5x the box side, white padding, 512x512 (INTER_AREA)",
            },
            **({"character": character} if character is not None else {}),
            **(extra_metadata or {}),
        }
        return render_clip(
            loaded,
            prompt,
            image,
            negative_prompt,
            seed,
            num_frames=frames_n,
            width=w,
            height=h,
            steps=n_steps,
            guidance=guidance,
            guidance_2=guidance_2,
            fps=fps,
            character=character,
            identity=identity,
            callback_on_step_end=step_window,
            **render_kwargs,
        )
    finally:
        for hd in handles:
            hd.detach()


__all__ = ["PreparedReference", "effective_reference_settings", "prepare_references", "render_reference_clip"]
