"""Run a loaded pipeline: one still or one clip, with the metadata that reproduces it.

Identity conditioning (FaceID / InstantID / Wan identity) arrives in later layers; they pass
their extra pipeline arguments through `**pipeline_kwargs` and their records through `models` /
`character`, so this function stays the single place that seeds, runs and describes a render.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine._core.errors import InputError
from engine.presets import SIDE_MULTIPLE, StillPreset, VideoPreset

from .loading import LoadedPipeline

METADATA_VERSION = 2  # 2: records the licence mode (`commercial_use`); `models` lists only what was loaded


@dataclass
class StillResult:
    """`images` are PIL images (or latents when `output_type="latent"`); `extras` holds by-products (e.g. the
    keypoint image an InstantID render was conditioned on)."""

    images: list[Any]
    metadata: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClipResult:
    """`frames` is (F, H, W, 3) uint8."""

    frames: np.ndarray
    fps: int
    metadata: dict[str, Any] = field(default_factory=dict)
    latents: Any = None  # with output_type="latent"


def _generator(seed: int):
    import torch

    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise InputError(f"seed must be an integer between 0 and 2**63-1 (got {seed!r})")
    # A CPU generator gives the same noise on every device, so a seed reproduces across machines.
    return torch.Generator(device="cpu").manual_seed(seed)


def _check_side(name: str, value: int, multiple: int) -> int:
    if not isinstance(value, int) or not 16 <= value <= 4096 or value % multiple:
        raise InputError(f"{name} must be a multiple of {multiple} between 16 and 4096 (got {value!r})")
    return value


def _size_steps_guidance(preset, prompt, width, height, steps, guidance) -> tuple[int, int, int, float]:
    """Checked (width, height, steps, guidance): the caller's overrides, else the preset's."""
    if not isinstance(prompt, str):
        raise InputError("prompt must be text")
    m = SIDE_MULTIPLE[preset.pipeline]
    w = _check_side("width", width if width is not None else preset.width, m)
    h = _check_side("height", height if height is not None else preset.height, m)
    n_steps = steps if steps is not None else preset.steps
    if not isinstance(n_steps, int) or not 1 <= n_steps <= 200:
        raise InputError(f"steps must be between 1 and 200 (got {n_steps!r})")
    cfg = guidance if guidance is not None else preset.guidance
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not 0.0 <= cfg <= 30.0:
        raise InputError(f"guidance must be a number between 0 and 30 (got {cfg!r})")
    return w, h, n_steps, float(cfg)


def build_metadata(
    kind: str,
    loaded: LoadedPipeline,
    *,
    seed: int,
    prompt: str,
    negative_prompt: str,
    parameters: dict[str, Any],
    character: dict[str, Any] | None,
    duration_s: float,
    models: dict[str, dict[str, Any]] | None = None,
    identity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to reproduce and audit a render (JSON-serialisable). `identity` describes the identity
    conditioning that was applied (method, characters with encoder id + model hash + version, scales); None for a
    render without any, and then no character is recorded either."""
    import engine

    return {
        "flx_metadata_version": METADATA_VERSION,
        "kind": kind,
        "engine_version": engine.__version__,
        "preset": loaded.preset.name,
        "pipeline": loaded.preset.pipeline,
        "seed": seed,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "parameters": parameters,
        "models": {**loaded.models, **(models or {})},
        "character": (
            {"id": character.get("id"), "version": character.get("version")} if character is not None else None
        ),
        "identity": identity,
        "commercial_use": loaded.commercial_use,
        "runtime": loaded.plan.model_dump(include={"device", "dtype", "attention", "offload", "device_name"}),
        "duration_s": round(duration_s, 3),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _observe(pipeline_kwargs: dict[str, Any], n_steps: int) -> None:
    """Let a job runner's step observer (`engine._core.progress`) see this call's steps."""
    from engine._core.progress import observe_steps

    callback = observe_steps(pipeline_kwargs.pop("callback_on_step_end", None), n_steps)
    if callback is not None:
        pipeline_kwargs["callback_on_step_end"] = callback


def render_still(
    loaded: LoadedPipeline,
    prompt: str,
    negative_prompt: str | None = None,
    seed: int = 0,
    *,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    num_images: int = 1,
    output_type: str = "pil",
    character: dict[str, Any] | None = None,
    models: dict[str, dict[str, Any]] | None = None,
    identity: dict[str, Any] | None = None,
    **pipeline_kwargs,
) -> StillResult:
    """Render still image(s) with an SDXL-family preset.

    Args:
        loaded (`LoadedPipeline`): from `load_pipeline` with a still preset.
        prompt (`str`): what to draw.
        negative_prompt (`str`, *optional*): defaults to the preset's.
        seed (`int`, defaults to 0): same seed + same settings = same image.
        width, height, steps, guidance (*optional*): override the preset.
        num_images (`int`, defaults to 1): images per prompt (seeded by one generator).
        output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"latent"`.
        character (`dict`, *optional*): `{"id", "version"}` recorded in the metadata; only for callers whose
            `pipeline_kwargs` apply that character's identity (metadata never claims conditioning it lacks).
        models (`dict`, *optional*): extra component records (adapters) for the metadata.
        **pipeline_kwargs: passed to the diffusers pipeline (e.g. `ip_adapter_image_embeds`).
    """
    preset = loaded.preset
    if not isinstance(preset, StillPreset):
        raise InputError(f"preset '{preset.name}' makes video, not stills: use a stills preset or render a clip")
    w, h, n_steps, cfg = _size_steps_guidance(preset, prompt, width, height, steps, guidance)
    if not 1 <= num_images <= 16:
        raise InputError(f"num_images must be between 1 and 16 (got {num_images})")
    neg = preset.negative_prompt if negative_prompt is None else negative_prompt

    from .long_prompt import chunked_prompt_embeds, needs_chunks

    text: dict[str, Any] = {"prompt": prompt, "negative_prompt": neg or None}
    chunks = 1
    if needs_chunks(loaded.pipe, prompt, neg):  # over 77 CLIP tokens: encoded in pieces, not cut
        text, chunks = chunked_prompt_embeds(loaded.pipe, prompt, neg or None, cfg=cfg > 1.0)

    _observe(pipeline_kwargs, n_steps)
    t0 = time.perf_counter()
    out = loaded.pipe(
        **text,
        width=w,
        height=h,
        num_inference_steps=n_steps,
        guidance_scale=cfg,
        num_images_per_prompt=num_images,
        generator=_generator(seed),
        output_type=output_type,
        **pipeline_kwargs,
    )
    duration = time.perf_counter() - t0
    params = {
        "width": w,
        "height": h,
        "steps": n_steps,
        "guidance": cfg,
        "scheduler": type(loaded.pipe.scheduler).__name__,
        "scheduler_preset": preset.scheduler,
        "num_images": num_images,
        "prompt_chunks": chunks,
    }
    meta = build_metadata(
        "still",
        loaded,
        seed=seed,
        prompt=prompt,
        negative_prompt=neg,
        parameters=params,
        character=character,
        duration_s=duration,
        models=models,
        identity=identity,
    )
    return StillResult(images=list(out.images), metadata=meta)


def _fit_image(image, width: int, height: int):
    """Centre-crop `image` to the target aspect and resize: no distortion, exact output size."""
    from PIL import Image, ImageOps

    if not isinstance(image, Image.Image):
        raise InputError("the start image must be a PIL image (load it with engine.identity.images or PIL)")
    return ImageOps.fit(image.convert("RGB"), (width, height), method=Image.Resampling.LANCZOS)


def _vace_inputs(frames, n: int, width: int, height: int) -> dict[str, Any]:
    """VACE continuation: the given frames first (mask black = keep), grey frames to generate (mask white)."""
    from PIL import Image

    from engine.outputs import to_uint8_frames

    given = (
        [Image.fromarray(f) for f in to_uint8_frames(frames)]
        if not isinstance(frames[0], Image.Image)
        else list(frames)
    )
    k = len(given)
    if not 1 <= k < n:
        raise InputError(f"{k} conditioning frames for a {n}-frame clip: give 1 to {n - 1}")
    video = [_fit_image(f, width, height) for f in given] + [Image.new("RGB", (width, height), (127, 127, 127))] * (
        n - k
    )
    mask = [Image.new("L", (width, height), 0)] * k + [Image.new("L", (width, height), 255)] * (n - k)
    return {"video": video, "mask": mask}


def render_clip(
    loaded: LoadedPipeline,
    prompt: str,
    image=None,
    negative_prompt: str | None = None,
    seed: int = 0,
    *,
    num_frames: int | None = None,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    fps: int | None = None,
    character: dict[str, Any] | None = None,
    models: dict[str, dict[str, Any]] | None = None,
    last_image=None,
    conditioning_frames=None,
    output_type: str = "np",
    guidance_2: float | None = None,
    identity: dict[str, Any] | None = None,
    **pipeline_kwargs,
) -> ClipResult:
    """Render a clip with a Wan preset (image-to-video, or text-to-video for `wan-t2v`).

    Args:
        loaded (`LoadedPipeline`): from `load_pipeline` with a video preset.
        prompt (`str`): what happens in the clip.
        image (`PIL.Image`, *optional*): the start frame; required for `wan-i2v`, optional for `wan-ti2v`
            (text-only without it), refused by `wan-t2v`.
        num_frames (`int`, *optional*): 4k+1 frames; defaults to the preset's.
        fps (`int`, *optional*): frame rate recorded for the MP4; defaults to the preset's (24).
        last_image (`PIL.Image`, *optional*): the end frame, where the model supports one: `wan-flf2v` (required)
            and Wan 2.2 I2V A14B; refused elsewhere (TI2V-5B would ignore it silently).
        conditioning_frames (*optional*): `wan-vace` continuation: the frames the clip starts from (the previous
            segment's last frames), kept by the mask; the rest is generated.
        output_type (`str`, defaults to `"np"`): `"latent"` keeps the latents in `ClipResult.latents` (tests judge
            conditioning there: random tiny VAEs squash pixel differences) and leaves `frames` empty.
        guidance_2 (`float`, *optional*): two-expert presets (`boundary_ratio`): the low-noise expert's guidance;
            defaults to the preset's `guidance_2`, else the same as `guidance`.
        identity (`dict`, *optional*): the identity conditioning applied (e.g. Stand-In's reference record), for
            the metadata; only from callers whose `pipeline_kwargs` apply it.
        Other arguments as in `render_still`.
    """
    preset = loaded.preset
    if not isinstance(preset, VideoPreset):
        raise InputError(f"preset '{preset.name}' makes stills, not video: use a video preset")
    w, h, n_steps, cfg = _size_steps_guidance(preset, prompt, width, height, steps, guidance)
    frames_n = num_frames if num_frames is not None else preset.num_frames
    if not isinstance(frames_n, int) or frames_n < 5 or (frames_n - 1) % 4:
        raise InputError(f"num_frames must be 4k+1 and at least 5, e.g. 9, 49, 81 (got {frames_n!r})")
    out_fps = int(fps if fps is not None else preset.fps)
    neg = preset.negative_prompt if negative_prompt is None else negative_prompt

    call: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": neg or None,
        "height": h,
        "width": w,
        "num_frames": frames_n,
        "num_inference_steps": n_steps,
        "guidance_scale": cfg,
        "generator": _generator(seed),
        "max_sequence_length": preset.max_sequence_length,
        "output_type": output_type,
    }
    two_experts = getattr(preset, "boundary_ratio", None) is not None
    cfg_2 = guidance_2 if guidance_2 is not None else getattr(preset, "guidance_2", None)
    if guidance_2 is not None and not two_experts:
        raise InputError(f"preset '{preset.name}' has one expert: guidance_2 applies to two-expert presets only")
    if cfg_2 is not None:
        if isinstance(cfg_2, bool) or not isinstance(cfg_2, (int, float)) or not 0.0 <= cfg_2 <= 30.0:
            raise InputError(f"guidance_2 must be a number between 0 and 30 (got {cfg_2!r})")
        call["guidance_scale_2"] = float(cfg_2)
    pipe = loaded.pipe
    kind = preset.pipeline
    if last_image is not None:
        two_experts = getattr(pipe, "transformer_2", None) is not None and kind == "wan-i2v"
        if kind != "wan-flf2v" and not two_experts:
            raise InputError(
                f"preset '{preset.name}' has no end-frame conditioning (TI2V-5B and Wan 2.1 I2V would ignore or "
                "misread it): use video-wan21-flf2v-14b-720p or video-wan22-i2v-a14b for a start + end image"
            )
        call["last_image"] = _fit_image(last_image, w, h)
    if conditioning_frames is not None and kind != "wan-vace":
        raise InputError(f"preset '{preset.name}' cannot continue from frames: use a VACE preset")
    if kind in ("wan-t2v", "wan-vace"):
        if image is not None:
            raise InputError(f"preset '{preset.name}' is text-to-video: drop the start image or use an i2v preset")
        if kind == "wan-vace" and conditioning_frames is not None:
            call.update(_vace_inputs(conditioning_frames, frames_n, w, h))
    elif image is not None:
        call["image"] = _fit_image(image, w, h)
    elif kind == "wan-ti2v":
        pipe = loaded.text_to_video_pipe()  # TI2V also generates from text alone
    else:
        raise InputError(f"preset '{preset.name}' animates a start image: pass --image PATH")
    if kind == "wan-flf2v" and last_image is None:
        raise InputError(f"preset '{preset.name}' interpolates between two frames: pass --end-image PATH too")

    _observe(pipeline_kwargs, n_steps)
    t0 = time.perf_counter()
    out = pipe(**call, **pipeline_kwargs)
    duration = time.perf_counter() - t0
    from engine.outputs import to_uint8_frames

    latents = None
    if output_type == "latent":
        latents, frames = out.frames, np.zeros((0, h, w, 3), np.uint8)
    else:
        frames = to_uint8_frames(np.asarray(out.frames))
    params = {
        "width": w,
        "height": h,
        "num_frames": frames_n,
        "fps": out_fps,
        "steps": n_steps,
        "guidance": cfg,
        "scheduler": type(loaded.pipe.scheduler).__name__,
        "flow_shift": loaded.pipe.scheduler.config.get("flow_shift"),
        "max_sequence_length": preset.max_sequence_length,
        "start_image": image is not None,
        "end_image": last_image is not None,
        "conditioning_frames": 0 if conditioning_frames is None else len(conditioning_frames),
    }
    if two_experts:
        params.update(boundary_ratio=loaded.pipe.config.boundary_ratio, guidance_2=call.get("guidance_scale_2", cfg))
    meta = build_metadata(
        "clip",
        loaded,
        seed=seed,
        prompt=prompt,
        negative_prompt=neg,
        parameters=params,
        character=character,
        duration_s=duration,
        models=models,
        identity=identity,
    )
    if identity is None:  # a Stand-In preset rendered without references: its checkpoints were not applied
        for slot in ("reference", "reference_2"):
            meta["models"].pop(slot, None)
    return ClipResult(frames=frames, fps=out_fps, metadata=meta, latents=latents)


__all__ = ["ClipResult", "StillResult", "build_metadata", "render_clip", "render_still"]
