"""One identity-conditioned still: FaceID-Plus-v2 or InstantID on the preset's loaded diffusers pipeline.

It builds the method's inputs (`conditioning.py`), sets the adapter scales, masks and step window, and hands the
call to `pipelines.render.render_still`, the single place that seeds, runs and describes a render. Strength 0
makes every identity contribution exactly zero (adapter scale, LoRA weight and IdentityNet scale), so the output
equals the plain SDXL pipeline's bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from engine._core.errors import InputError
from engine.identity.layout import Region, check_count, layout
from engine.presets import IdentityDefaults

from ..character_lora import reapply_character_lora
from ..loading import LoadedPipeline
from ..render import StillResult, _size_steps_guidance, render_still
from .conditioning import IdentityInput, faceid_inputs, instantid_inputs, region_mask_tensor

MAX_STRENGTH = 2.0


def effective_settings(
    defaults: IdentityDefaults, strength: float, overrides: dict[str, float | None]
) -> tuple[IdentityDefaults, float]:
    """The preset's identity defaults with the shot's overrides, checked by the same model (one source of bounds)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= MAX_STRENGTH:
        raise InputError(f"identity strength must be a number from 0 to {MAX_STRENGTH:g} (got {strength!r})")
    data = defaults.model_dump()
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return IdentityDefaults.model_validate(data), float(strength)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "identity window"
        raise InputError(f"identity {key}: {str(err['msg']).replace('Value error, ', '')}") from None


def _check_identities(loaded: LoadedPipeline, identities: Sequence[IdentityInput]) -> None:
    check_count(len(identities))
    want = loaded.extras.get("encoder_id")
    sha = loaded.extras.get("encoder_sha256")
    for ident in identities:
        if ident.encoder_id != want or (sha is not None and ident.model_sha256 != sha):
            raise InputError(
                f"character '{ident.name}' brings a {ident.encoder_id} embedding, but preset '{loaded.preset.name}' "
                f"conditions on {want}: run `flx character reembed {ident.name} --encoder {want}`"
            )


def render_identity_still(
    loaded: LoadedPipeline,
    prompt: str,
    negative_prompt: str | None,
    seed: int,
    identities: Sequence[IdentityInput],
    *,
    regions: Sequence[Region] | None = None,
    strength: float = 1.0,
    scale: float | None = None,
    structure_scale: float | None = None,
    lora_scale: float | None = None,
    controlnet_scale: float | None = None,
    start: float | None = None,
    end: float | None = None,
    yaw: float | None = None,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    output_type: str = "pil",
    extra_metadata: dict[str, Any] | None = None,
) -> StillResult:
    """Render one still of 1-4 characters with the preset's identity method.

    Args:
        loaded (`LoadedPipeline`): an `sdxl-faceid` or `sdxl-instantid` preset's pipeline (`load_pipeline`).
        identities (`Sequence[IdentityInput]`): one per character, with the method's encoder's embedding.
        regions (`Sequence[Region]`, *optional*): one per identity, in render pixels; default side by side.
        strength (`float`, defaults to 1.0): multiplies every identity scale; 0 is exactly the plain pipeline.
        scale, structure_scale, lora_scale, controlnet_scale, start, end (*optional*): override the preset's
            `identity` defaults (adapter scale, FaceID CLIP structure, FaceID LoRA, IdentityNet, step window).
        yaw (`float`, *optional*): InstantID: draw the keypoints from a pose template at this head turn instead
            of the reference face's points.
        Other arguments as in `render_still`.
    """
    preset = loaded.preset
    method = preset.pipeline
    if method not in ("sdxl-faceid", "sdxl-instantid"):
        raise InputError(f"preset '{preset.name}' ({method}) has no identity conditioning: use an identity preset")
    _check_identities(loaded, identities)
    cfg_settings, strength = effective_settings(
        preset.identity or IdentityDefaults(),
        strength,
        {
            "scale": scale,
            "structure_scale": structure_scale,
            "lora_scale": lora_scale,
            "controlnet_scale": controlnet_scale,
            "start": start,
            "end": end,
        },
    )
    w, h, n_steps, cfg = _size_steps_guidance(preset, prompt, width, height, steps, guidance)
    n = len(identities)
    regions = list(regions) if regions is not None else layout(n, w, h)
    if len(regions) != n:
        raise InputError(f"{len(regions)} regions for {n} characters: give one region per character")
    use_cfg = cfg > 1.0
    pipe = loaded.pipe
    s = cfg_settings.scale * strength

    if method == "sdxl-faceid":
        inputs = faceid_inputs(loaded, identities, cfg=use_cfg)
        proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        proj.clip_embeds = inputs.clip_embeds
        proj.shortcut = True  # Plus-v2
        proj.shortcut_scale = cfg_settings.structure_scale
        lora = cfg_settings.lora_scale * strength
        if "faceid_0" in (getattr(pipe.unet, "peft_config", None) or {}) and loaded.extras.get("lora_scale") != lora:
            pipe.set_adapters(["faceid_0"], adapter_weights=[lora])  # walks every LoRA layer: only on a change
            reapply_character_lora(pipe)  # set_adapters switches off adapters it is not given (a character's LoRA)
            loaded.extras["lora_scale"] = lora
    else:
        if yaw is not None and not -90.0 <= float(yaw) <= 90.0:
            raise InputError(f"yaw must be between -90 and 90 degrees (got {yaw})")
        inputs = instantid_inputs(loaded, identities, regions, w, h, cfg=use_cfg, yaw=yaw)
        pipe.controlnet.face_tokens = inputs.face_tokens
        inputs.pipeline_kwargs.update(
            controlnet_conditioning_scale=cfg_settings.controlnet_scale * strength,
            control_guidance_start=cfg_settings.start,
            control_guidance_end=cfg_settings.end,
        )

    def scale_at(step: int) -> float | list[list[float]]:
        on = cfg_settings.start <= step / n_steps < cfg_settings.end
        v = s if on else 0.0
        return v if n == 1 else [[v] * n]

    def set_scale(value) -> None:
        # `set_ip_adapter_scale` walks every attention processor: set it only when the value changes
        if loaded.extras.get("ip_scale") != value:
            pipe.set_ip_adapter_scale(value)
            loaded.extras["ip_scale"] = value

    def step_window(pipeline, step, timestep, callback_kwargs):
        if step + 1 < n_steps:
            set_scale(scale_at(step + 1))  # the scale of the next step
        return callback_kwargs

    kwargs = dict(inputs.pipeline_kwargs)
    if n > 1:
        kwargs["cross_attention_kwargs"] = {"ip_adapter_masks": region_mask_tensor(regions, w, h)}
    set_scale(scale_at(0))
    identity_meta = {
        "method": "faceid" if method == "sdxl-faceid" else "instantid",
        "strength": strength,
        "scales": {
            "identity": cfg_settings.scale,
            **(
                {"structure": cfg_settings.structure_scale, "lora": cfg_settings.lora_scale}
                if method == "sdxl-faceid"
                else {}
            ),
            **({"controlnet": cfg_settings.controlnet_scale} if method == "sdxl-instantid" else {}),
        },
        "window": [cfg_settings.start, cfg_settings.end],
        "keypoints": ("pose template" if yaw is not None else "reference") if method == "sdxl-instantid" else None,
        "yaw": yaw,
        "characters": [
            {**ident.record(), "region": list(r.box), "face_box": [round(v, 1) for v in r.face]}
            for ident, r in zip(identities, regions)
        ],
        **(extra_metadata or {}),
    }
    try:
        result = render_still(
            loaded,
            prompt,
            negative_prompt,
            seed,
            width=w,
            height=h,
            steps=n_steps,
            guidance=cfg,
            output_type=output_type,
            character={"id": identities[0].character_id, "version": identities[0].version},
            identity=identity_meta,
            callback_on_step_end=step_window,
            **kwargs,
        )
    finally:
        if method == "sdxl-faceid":
            pipe.unet.encoder_hid_proj.image_projection_layers[0].clip_embeds = None
        else:
            pipe.controlnet.face_tokens = None
    if inputs.keypoint_image is not None:
        result.extras = {"keypoint_image": inputs.keypoint_image}
    return result


__all__ = ["MAX_STRENGTH", "effective_settings", "render_identity_still"]
