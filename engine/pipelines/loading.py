"""Load the diffusers pipeline of a preset from the weights store, placed as the runtime plan says.

Weights are loaded only from local, verified folders (`WeightsStore.require`) with
`local_files_only=True`: a render never reaches the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine._core.errors import ConfigError
from engine.presets import StillPreset, VideoPreset
from engine.runtime import RuntimePlan, apply_plan

# diffusers class per pipeline kind. Wan 2.2 TI2V ships as a `WanPipeline` folder; its image-to-video
# mode is `WanImageToVideoPipeline` over the same folder (no image encoder, `expand_timesteps`).
PIPELINE_CLASSES: dict[str, str] = {
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl-faceid": "StableDiffusionXLPipeline",  # + IP-Adapter-FaceID-Plus-v2 (load_ip_adapter) + CLIP ViT-H
    "sdxl-instantid": "StableDiffusionXLControlNetPipeline",  # controlnet=IdentityNet + the face IP-Adapter
    "wan-i2v": "WanImageToVideoPipeline",
    "wan-ti2v": "WanImageToVideoPipeline",
    "wan-t2v": "WanPipeline",
}

# Pipeline kinds whose identity conditioning is not wired into rendering yet: their weights would load, but a
# render would ignore the identity, so they are refused before any weights are read. (Empty since the Stills work
# wired FaceID and InstantID; kept as the mechanism for the next method that lands half-way.)
IDENTITY_NOT_WIRED: frozenset[str] = frozenset()


def refuse_unwired(preset: StillPreset | VideoPreset) -> None:
    """Refuse a preset whose identity conditioning is not wired yet, rather than render it without its identity."""
    if preset.pipeline in IDENTITY_NOT_WIRED:
        raise ConfigError(
            f"preset '{preset.name}' ({preset.pipeline}) needs identity conditioning, which rendering does not "
            "apply yet: use preset stills-sdxl (or its tiny twin) for now"
        )


# Still-preset scheduler names -> (diffusers class, extra config).
STILL_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


@dataclass
class LoadedPipeline:
    """A ready pipeline plus what produced it (for output metadata)."""

    pipe: Any
    preset: StillPreset | VideoPreset
    plan: RuntimePlan
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # identity parts: image encoder, encoder id/hash, ...
    commercial_use: bool = False  # the licence mode it was loaded under (recorded in every output)
    variants: dict[str, Any] = field(default_factory=dict, repr=False)

    def text_to_video_pipe(self):
        """Wan 2.2 TI2V without a start image: a `WanPipeline` sharing the loaded modules (built once)."""
        if "t2v" not in self.variants:
            import diffusers

            p = self.pipe
            self.variants["t2v"] = diffusers.WanPipeline(
                tokenizer=p.tokenizer,
                text_encoder=p.text_encoder,
                vae=p.vae,
                transformer=p.transformer,
                scheduler=p.scheduler,
                expand_timesteps=p.config.expand_timesteps,
            )
            self.variants["t2v"].set_progress_bar_config(**getattr(p, "_progress_bar_config", {}))
        return self.variants["t2v"]


def component_record(store, component_id: str) -> dict[str, Any]:
    """{id, revision, sha256 (whole-component digest), files {path: sha256}} of what was loaded.

    Verified loads read the locked bytes, so the lock's hashes are what was loaded. A component loaded under
    --allow-unverified adds `unverified: True`, and `files`/`sha256` are then the hashes of the files as read
    (`locked_sha256` and `mismatched` say how they differ from the lock), so an output never claims locked bytes.
    """
    from engine.models.store import digest_of

    lock = store.read_lock().components.get(component_id)
    record: dict[str, Any] = {
        "id": component_id,
        "revision": lock.revision if lock else None,
        "sha256": store.component_digest(component_id),
        "files": store.component_hashes(component_id),
    }
    loaded = store.unverified_hashes(component_id)
    if loaded is not None:
        locked = record["files"]
        record.update(
            unverified=True,
            files=loaded,
            sha256=digest_of(loaded),
            locked_sha256=record["sha256"],
            mismatched=sorted(rel for rel in locked if loaded.get(rel) != locked[rel]),
        )
    return record


def _configure_scheduler(pipe, preset: StillPreset | VideoPreset) -> None:
    import diffusers

    if isinstance(preset, StillPreset):
        if preset.scheduler == "default":
            return
        cls_name, extra = STILL_SCHEDULERS[preset.scheduler]
        pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)
        return
    extra = {"flow_shift": preset.flow_shift} if preset.flow_shift is not None else {}
    if preset.scheduler == "unipc":
        pipe.scheduler = diffusers.UniPCMultistepScheduler.from_config(pipe.scheduler.config, **extra)
    elif extra:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **extra)


def load_pipeline(
    preset: StillPreset | VideoPreset, store, plan: RuntimePlan, progress_bar: bool = False
) -> LoadedPipeline:
    """Load `preset`'s base pipeline from the store, verified, with `plan` applied.

    Args:
        preset (`StillPreset` or `VideoPreset`): what to load.
        store (`WeightsStore`): resolves and verifies component folders.
        plan (`RuntimePlan`): device, dtype and memory strategy.
        progress_bar (`bool`, defaults to `False`): show diffusers' step progress bars.

    Raises:
        `ConfigError`: the preset needs identity conditioning that rendering does not apply yet (before any weights
            are read: a real SDXL is ~7 GB).
        `ModelNotFound` / `WeightsIntegrityError`: the base weights are absent or fail verification.
    """
    refuse_unwired(preset)
    import diffusers
    import torch

    base_id = preset.components.base
    entry = store.manifest.get(base_id)
    path = store.require(base_id)
    for slot, cid in preset.components.ids().items():  # every slot is verified, loaded or not
        if slot != "base":
            store.require(cid)
    cls = getattr(diffusers, PIPELINE_CLASSES[preset.pipeline])
    kwargs: dict[str, Any] = {"dtype": plan.torch_dtype, "local_files_only": True}
    if entry.variant:
        kwargs["variant"] = entry.variant
    models = {"base": component_record(store, base_id)}  # only what was loaded: metadata never claims more
    if preset.pipeline == "sdxl-instantid":
        from .stills_sdxl.identitynet import IdentityNet

        cid = preset.components.controlnet
        kwargs["controlnet"] = _load_part(IdentityNet, store.require(cid), cid, plan.torch_dtype)
        models["controlnet"] = component_record(store, cid)
    if preset.task == "video":
        # Wan's VAE (and CLIP image encoder) are kept in float32, as the model authors run them.
        kwargs["vae"] = diffusers.AutoencoderKLWan.from_pretrained(
            path, subfolder="vae", dtype=torch.float32, local_files_only=True
        )
        if preset.pipeline == "wan-i2v":
            from transformers import CLIPVisionModel

            kwargs["image_encoder"] = CLIPVisionModel.from_pretrained(
                path / "image_encoder", dtype=torch.float32, local_files_only=True
            )
    try:
        pipe = cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"weights '{base_id}' in {path} do not load as {cls.__name__} ({first}): "
            f"check that preset '{preset.name}' names the right base model"
        ) from None
    pipe.set_progress_bar_config(disable=not progress_bar)
    _configure_scheduler(pipe, preset)
    extras: dict[str, Any] = {}
    if preset.pipeline in ("sdxl-faceid", "sdxl-instantid"):
        extras = _load_identity_parts(pipe, preset, store, plan, models)
    apply_plan(pipe, plan)
    if "image_encoder" in extras:
        extras["image_encoder"].to(plan.device)
    return LoadedPipeline(
        pipe=pipe,
        preset=preset,
        plan=plan,
        models=models,
        extras=extras,
        commercial_use=bool(store.settings.commercial_use),
    )


def _load_part(cls, path, component_id: str, dtype):
    """`cls.from_pretrained(path)` of one component, with a load failure named as one line."""
    try:
        return cls.from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"weights '{component_id}' in {path} do not load as {cls.__name__} ({first})") from None


def _load_identity_parts(pipe, preset: StillPreset, store, plan: RuntimePlan, models: dict) -> dict[str, Any]:
    """The identity adapter (diffusers' own `load_ip_adapter`, which also loads FaceID's LoRA as the peft adapter
    `faceid_0`), FaceID's CLIP ViT-H image encoder, and the encoder id + model hash of the face pack the method was
    trained with (its embeddings come from the characters; the pack is verified and licence-checked here)."""
    from engine.identity.registry import encoder_for_component

    comps = preset.components
    adapter = store.manifest.get(comps.identity_adapter)
    adapter_dir = store.require(adapter.id)
    try:
        pipe.load_ip_adapter(
            str(adapter_dir), subfolder="", weight_name=adapter.weight_name, image_encoder_folder=None
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"identity adapter '{adapter.id}' in {adapter_dir} does not load ({first})") from None
    models["identity_adapter"] = component_record(store, adapter.id)
    extras: dict[str, Any] = {}
    if preset.pipeline == "sdxl-faceid":
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        extras["image_encoder"] = _load_part(
            CLIPVisionModelWithProjection, store.require(comps.image_encoder), comps.image_encoder, plan.torch_dtype
        )
        extras["image_processor"] = CLIPImageProcessor()  # CLIP's own 224 px resize, crop and normalisation
        models["image_encoder"] = component_record(store, comps.image_encoder)
    face = store.manifest.get(comps.face_analysis)
    store.require(face.id)
    extras["encoder_id"] = encoder_for_component(store.manifest, face.id)
    extras["encoder_sha256"] = (store.unverified_hashes(face.id) or store.component_hashes(face.id)).get(
        face.encoder.recognition_file
    )
    models["face_analysis"] = component_record(store, face.id)
    return extras


__all__ = [
    "IDENTITY_NOT_WIRED",
    "refuse_unwired",
    "PIPELINE_CLASSES",
    "STILL_SCHEDULERS",
    "LoadedPipeline",
    "component_record",
    "load_pipeline",
]
