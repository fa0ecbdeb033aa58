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
    "wan-vace": "WanVACEPipeline",  # continuation: conditioning frames + mask
    "wan-flf2v": "WanImageToVideoPipeline",  # first + last frame (Wan2.1-FLF2V)
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
        # Wan is a flow model: UniPC on flow sigmas whatever the folder ships (at 4 steps and shift 5 the timesteps
        # are [999, 937, 833, 625], the step-distilled LoRAs' training timesteps; FlowMatchEuler gives others).
        pipe.scheduler = diffusers.UniPCMultistepScheduler.from_config(
            pipe.scheduler.config, prediction_type="flow_prediction", use_flow_sigmas=True, **extra
        )
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
        if preset.pipeline in ("wan-i2v", "wan-flf2v") and (path / "image_encoder").is_dir():
            # Wan 2.1 I2V / FLF2V condition on CLIP image tokens; Wan 2.2 I2V A14B ships no image encoder
            from transformers import CLIPVisionModel

            kwargs["image_encoder"] = CLIPVisionModel.from_pretrained(
                path / "image_encoder", dtype=torch.float32, local_files_only=True
            )
    if getattr(preset, "boundary_ratio", None) is not None:
        kwargs["boundary_ratio"] = preset.boundary_ratio  # the preset's expert switch over the folder's config
    try:
        pipe = cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"weights '{base_id}' in {path} do not load as {cls.__name__} ({first}): "
            f"check that preset '{preset.name}' names the right base model"
        ) from None
    if getattr(preset, "boundary_ratio", None) is not None and getattr(pipe, "transformer_2", None) is None:
        raise ConfigError(
            f"preset '{preset.name}' sets boundary_ratio, but weights '{base_id}' have no transformer_2 (one expert): "
            "remove boundary_ratio or name a two-expert base model (Wan 2.2 A14B)"
        )
    pipe.set_progress_bar_config(disable=not progress_bar)
    _configure_scheduler(pipe, preset)
    extras: dict[str, Any] = {}
    if preset.pipeline in ("sdxl-faceid", "sdxl-instantid"):
        extras = _load_identity_parts(pipe, preset, store, plan, models)
    if getattr(preset, "reference", None) is not None and preset.reference.trained:
        extras["reference"] = _load_reference_weights(preset, store, models)
    if getattr(preset.components, "speed_lora", None) is not None:
        extras["speed_lora"] = _load_speed_loras(pipe, preset, store, models)
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


def _load_reference_weights(preset: VideoPreset, store, models: dict) -> dict[str, Any]:
    """{"transformer": StandInWeights, ["transformer_2": ...]}: each expert's Stand-In checkpoint, read from the
    store's converted safetensors (verified like every component; the release's pickle is never read here)."""
    from engine.adapters.standin import load_standin_weights
    from engine.models.store import fix_hint

    out: dict[str, Any] = {}
    for slot, expert in (("reference", "transformer"), ("reference_2", "transformer_2")):
        cid = getattr(preset.components, slot)
        if cid is None:
            continue
        entry = store.manifest.get(cid)
        folder = store.require(cid)
        out[expert] = load_standin_weights(folder / entry.weight_name, name=cid, fix=fix_hint(entry))
        models[slot] = component_record(store, cid)
        converted = store.read_lock().components[cid].converted_from
        if converted:
            models[slot]["converted_from"] = dict(converted)
    return out


# Speed-LoRA slot -> (expert it loads into, peft adapter name; ids may hold dots, adapter names may not).
SPEED_LORA_SLOTS = (("speed_lora", "transformer", "speed_lora"), ("speed_lora_2", "transformer_2", "speed_lora_2"))


def _load_speed_loras(pipe, preset: VideoPreset, store, models: dict) -> dict[str, Any]:
    """{expert: {id, adapter, scale}}: each step-distilled LoRA through diffusers' own Wan loader (its converter
    maps the releases' `diffusion_model.` keys), as one peft adapter per expert at the preset's scale.

    peft wraps the transformer's linear layers themselves, so every forward sees the LoRA: the video pass and
    Stand-In's reference pass (a forward of the same transformer) alike. diffusers loads whatever matches and only
    warns about the rest, so the converted keys are checked against the expert first: a LoRA for another model
    is refused instead of half-applied."""
    from engine.models.store import fix_hint

    if not hasattr(pipe, "load_lora_weights"):
        raise ConfigError(
            f"preset '{preset.name}': {type(pipe).__name__} takes no LoRAs: remove components.speed_lora"
        )
    out: dict[str, Any] = {}
    for slot, expert, adapter in SPEED_LORA_SLOTS:
        cid = getattr(preset.components, slot)
        if cid is None:
            continue
        entry = store.manifest.get(cid)
        folder = store.require(cid)
        transformer = getattr(pipe, expert, None)
        if transformer is None:
            raise ConfigError(
                f"preset '{preset.name}' names components.{slot}, but weights '{preset.components.base}' have no "
                f"{expert}: remove it or name a two-expert base model"
            )
        try:
            state_dict = pipe.lora_state_dict(str(folder), weight_name=entry.weight_name, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"speed LoRA '{cid}' in {folder} does not read as a Wan LoRA ({first}): {fix_hint(entry)}"
            ) from None
        check_lora_fits(state_dict, transformer, cid, f"the {expert} of '{preset.components.base}'")
        try:
            pipe.load_lora_weights(state_dict, adapter_name=adapter, load_into_transformer_2=expert == "transformer_2")
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"speed LoRA '{cid}' does not load into the {expert} ({first}): {fix_hint(entry)}"
            ) from None
        transformer.set_adapters([adapter], weights=[preset.speed_lora_scale])
        models[slot] = {
            **component_record(store, cid),
            "adapter": adapter,
            "expert": expert,
            "scale": preset.speed_lora_scale,
        }
        out[expert] = {"id": cid, "adapter": adapter, "scale": preset.speed_lora_scale}
    return out


def check_lora_fits(state_dict: dict, transformer, name: str, target: str) -> None:
    """Raise a one-line `ConfigError` unless every converted key (`transformer.<module>.lora_{A,B}.*`) names a
    linear layer of `transformer` with the LoRA's in/out features."""
    import torch

    if not state_dict:
        raise ConfigError(f"speed LoRA '{name}' holds no LoRA weights: name a LoRA file")
    modules = dict(transformer.named_modules())
    for key, tensor in state_dict.items():
        module_name, sep, part = key.removeprefix("transformer.").rpartition(".lora_")
        if not key.startswith("transformer.") or not sep or part not in ("A.weight", "B.weight", "B.bias"):
            raise ConfigError(
                f"speed LoRA '{name}' has key '{key}', which diffusers' Wan loader does not map: use a release with "
                "`diffusion_model.`-prefixed original-Wan keys (lightx2v, Wan2.2-Lightning) or diffusers' own format"
            )
        layer = getattr(modules.get(module_name), "base_layer", modules.get(module_name))
        if not isinstance(layer, torch.nn.Linear):
            raise ConfigError(
                f"speed LoRA '{name}' has weights for '{module_name}', which {target} lacks: it was made for another "
                "Wan model (e.g. I2V vs T2V, or another size): name the speed LoRA made for this one"
            )
        want = {"A.weight": layer.in_features, "B.weight": layer.out_features, "B.bias": layer.out_features}[part]
        got = tensor.shape[1] if part == "A.weight" else tensor.shape[0]
        if tensor.ndim != (1 if part == "B.bias" else 2) or got != want:
            raise ConfigError(
                f"speed LoRA '{name}' does not fit '{module_name}' of {target} ({tuple(tensor.shape)} for a "
                f"{layer.in_features} -> {layer.out_features} layer): it was made for another Wan model size: name the "
                "speed LoRA made for this one"
            )


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
    "SPEED_LORA_SLOTS",
    "check_lora_fits",
    "LoadedPipeline",
    "component_record",
    "load_pipeline",
]
