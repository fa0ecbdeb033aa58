"""A character's own identity LoRA on a loaded (possibly warm, cached) pipeline: load, set its scale, unload.

The LoRA is the diffusers-format `pytorch_lora_weights.safetensors` a character stores verbatim (`Character.lora`).
It loads through diffusers' own `pipe.load_lora_weights` as one peft adapter (`"character"`) next to whatever
adapters the preset already holds (FaceID-Plus-v2's companion LoRA `faceid_0`, a Wan speed LoRA), which keep
their own weights: only the character adapter's layers are touched when it is loaded, scaled or unloaded.

Why a temporary file: diffusers reads a LoRA's alpha only from the safetensors header
(`__metadata__["lora_adapter_metadata"]`); a state dict passed in memory has no header, and diffusers then builds
the `LoraConfig` with alpha = r, which scales the delta by 1 instead of alpha/r. Writing the stored bytes, verbatim,
to a private temporary folder and loading that file keeps diffusers' own reading of the metadata (tested against
the in-memory peft model the LoRA was saved from).

Wan: the LoRA loads into `transformer` only (the high-noise expert of a Wan 2.2 two-expert preset, or the one
transformer of Wan 2.1); `info["experts"] = ["transformer", "transformer_2"]` loads the same file into both
experts. peft wraps the transformer's own linear layers, so every forward sees the LoRA: the video stream and
Stand-In's reference stream (a forward of the same transformer, `processors.attention_wan`) alike.

This module takes bytes and plain values only (pipelines never import `engine.characters`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine._core.errors import ConfigError, InputError
from engine._core.lora_file import read_lora_file

CHARACTER_ADAPTER = "character"
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
MAX_SCALE = 2.0
_STATE_ATTR = "_flx_character_lora"  # what is loaded, on the pipeline object (so a cached pipeline knows)


def lora_target_of(pipe) -> str:
    """`"sdxl-unet"` for an SDXL pipeline, `"wan-transformer"` for a Wan one (what a LoRA for it must adapt)."""
    if getattr(pipe, "unet", None) is not None:
        return "sdxl-unet"
    if getattr(pipe, "transformer", None) is not None:
        return "wan-transformer"
    raise ConfigError(f"{type(pipe).__name__} takes no character LoRA: use an SDXL or Wan preset")


def loaded_character_lora(pipe) -> dict[str, Any] | None:
    """The record of the character LoRA loaded on `pipe` ({adapter, sha256, scale, components, ...}), or None."""
    return getattr(pipe, _STATE_ATTR, None)


def _components(pipe, names) -> list[tuple[str, Any]]:
    return [(n, getattr(pipe, n)) for n in names if getattr(pipe, n, None) is not None]


def _adapters_of(model) -> list[str]:
    return list(getattr(model, "peft_config", None) or {})


def _tuner_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return (m for m in model.modules() if isinstance(m, BaseTunerLayer))


def _active_adapters(model) -> dict[str, list[str]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {n: list(m.active_adapters) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def _new_layers(pipe, names, active_before: dict[str, dict[str, list[str]]]) -> dict[str, list[str]]:
    """Per component, the layers peft wrapped since `active_before` was taken (they hold only the new adapter)."""
    return {n: sorted(set(_active_adapters(m)) - set(active_before.get(n, {}))) for n, m in _components(pipe, names)}


def _check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 <= float(scale) <= MAX_SCALE:
        raise InputError(f"character LoRA scale must be a number from 0 to {MAX_SCALE:g} (got {scale!r})")
    return float(scale)


def set_character_lora_scale(pipe, scale: float, *, adapter_name: str = CHARACTER_ADAPTER) -> None:
    """Set the character adapter's weight and make it active beside the adapters already active in each layer.

    Only the character adapter's entries change (peft `set_scale`: scaling = scale * alpha / r, as diffusers'
    `set_adapters` computes it); other adapters keep their scaling bit for bit. Scale 0 makes its delta exactly 0.
    """
    state = loaded_character_lora(pipe)
    if state is None or state["adapter"] != adapter_name:
        raise ConfigError("no character LoRA is loaded on this pipeline: call load_character_lora first")
    scale = _check_scale(scale)
    for _, model in _components(pipe, state["components"]):
        for layer in _tuner_layers(model):
            if adapter_name not in getattr(layer, "scaling", {}):
                continue
            layer.set_scale(adapter_name, scale)
            if adapter_name not in layer.active_adapters:
                layer.set_adapter([*layer.active_adapters, adapter_name])
    state["scale"] = scale


def reapply_character_lora(pipe) -> None:
    """Re-activate the character adapter after a `pipe.set_adapters([...])` that named only other adapters
    (diffusers' `set_adapters` deactivates every adapter it is not given)."""
    state = loaded_character_lora(pipe)
    if state is not None:
        set_character_lora_scale(pipe, state["scale"], adapter_name=state["adapter"])


def check_character_lora(
    info: dict[str, Any],
    *,
    preset_base_id: str,
    preset_base_sha256: str | None = None,
    target: str | None = None,
    accepts: Sequence[str] = (),
) -> None:
    """Refuse (one-line `ConfigError` naming both model ids) a LoRA trained for another base model than the
    preset's, or for another kind of model (`target`). `accepts`: the other bases whose LoRAs the preset's base takes
    unchanged (the manifest's `accepts_loras_of`; their weights are not this base's, so no hash is compared). Cheap:
    callers run it before any weights load."""
    trained_on = info.get("base_model_id")
    if trained_on in accepts:
        preset_base_sha256 = None
    elif trained_on != preset_base_id:
        raise ConfigError(
            f"this character's LoRA was trained on base model '{trained_on}', but the preset's base model is "
            f"'{preset_base_id}': use a preset on '{trained_on}' or retrain the LoRA on '{preset_base_id}'"
        )
    trained_sha, preset_sha = info.get("base_model_sha256"), preset_base_sha256
    if trained_sha and preset_sha and trained_sha.removeprefix("sha256:") != preset_sha.removeprefix("sha256:"):
        raise ConfigError(
            f"this character's LoRA was trained on other weights of '{trained_on}' ({trained_sha[:19]}...) than the "
            f"preset's base model '{preset_base_id}' holds ({preset_sha[:19]}...): retrain it on these weights"
        )
    if target is not None and info.get("target") not in (None, target):
        raise ConfigError(
            f"this character's LoRA adapts a {info['target']} (base '{trained_on}'), but the preset "
            f"(base '{preset_base_id}') needs a {target} LoRA: use a preset of the kind it was trained for"
        )


def load_character_lora(
    pipe,
    lora_bytes: bytes,
    info: dict[str, Any],
    *,
    preset_base_id: str,
    preset_base_sha256: str | None = None,
    adapter_name: str = CHARACTER_ADAPTER,
    scale: float = 1.0,
    accepts: Sequence[str] = (),
) -> dict[str, Any]:
    """Load a character's LoRA into `pipe` as the peft adapter `adapter_name` at `scale`.

    A pipeline that already holds the same LoRA (same sha256) only has its scale set; one holding another
    character's LoRA has it unloaded first. Other adapters (FaceID's `faceid_0`, speed LoRAs) stay as they were.

    Args:
        pipe: a loaded diffusers SDXL or Wan pipeline (`LoadedPipeline.pipe`).
        lora_bytes (`bytes`): the LoRA's `.safetensors` file, as stored in the character.
        info (`dict`): the character's LoRA record (`LoraInfo.model_dump()`): `base_model_id`, `sha256`, optional
            `base_model_sha256`, `target`, `experts` (Wan: which transformers to load into).
        preset_base_id (`str`): the preset's base component id (`preset.components.base`).
        preset_base_sha256 (`str`, *optional*): that component's digest (`component_record(...)["sha256"]`);
            when both sides have one they must match.
        adapter_name (`str`, *optional*, defaults to `"character"`): the peft adapter name.
        scale (`float`, *optional*, defaults to 1.0): the adapter weight, 0-2.
        accepts (`Sequence[str]`, *optional*): other bases whose LoRAs this base takes (manifest `accepts_loras_of`).

    Returns:
        `dict`: what was loaded (adapter, sha256, scale, base, components), for output metadata.

    Raises:
        `ConfigError`: the LoRA was trained for another base model (one line naming both ids), or is for another
            kind of pipeline, or diffusers cannot load it.
        `InputError`: the bytes are not a diffusers LoRA, or the scale is out of range.

    Examples:
        ```py
        >>> rec = load_character_lora(loaded.pipe, ch.lora.data, ch.lora.model_dump(), preset_base_id="sdxl-base")
        >>> ...  # render
        >>> unload_character_lora(loaded.pipe)  # the cached pipeline is exactly as before
        ```
    """
    import hashlib

    scale = _check_scale(scale)
    target = lora_target_of(pipe)
    check_character_lora(
        info, preset_base_id=preset_base_id, preset_base_sha256=preset_base_sha256, target=target, accepts=accepts
    )
    trained_on = info.get("base_model_id")
    sha256 = hashlib.sha256(lora_bytes).hexdigest()
    if info.get("sha256") not in (None, sha256):
        raise InputError("character LoRA bytes do not match their recorded sha256: re-import the character")
    summary = read_lora_file(lora_bytes, target, what="the character's LoRA")
    current = loaded_character_lora(pipe)
    if current is not None:
        if current["sha256"] == sha256 and current["adapter"] == adapter_name:
            set_character_lora_scale(pipe, scale, adapter_name=adapter_name)
            return dict(current)
        unload_character_lora(pipe)
    if target == "sdxl-unet":
        names = list(summary.components)
        experts = ["unet"]
    else:
        experts = list(info.get("experts") or ["transformer"])
        bad = [e for e in experts if e not in ("transformer", "transformer_2") or getattr(pipe, e, None) is None]
        if bad:
            raise ConfigError(
                f"this character's LoRA names expert(s) {bad}, which {type(pipe).__name__} lacks: retrain it for "
                "this model"
            )
        names = experts
    before = {n: _adapters_of(m) for n, m in _components(pipe, names)}
    for n, adapters in before.items():
        if adapter_name in adapters:
            raise ConfigError(f"the {n} already holds an adapter named '{adapter_name}': pass another adapter_name")
    active_before = {n: _active_adapters(m) for n, m in _components(pipe, names)}
    state = {
        "adapter": adapter_name,
        "sha256": sha256,
        "scale": scale,
        "base_model_id": trained_on,
        "components": names,
        "experts": experts,
        "before": before,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="flx-lora-") as tmp:
            Path(tmp, WEIGHT_NAME).write_bytes(lora_bytes)  # verbatim: diffusers reads alpha from its header
            for expert in experts if target == "wan-transformer" else [None]:
                kwargs = {"load_into_transformer_2": expert == "transformer_2"} if expert else {}
                pipe.load_lora_weights(
                    tmp, weight_name=WEIGHT_NAME, adapter_name=adapter_name, local_files_only=True, **kwargs
                )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        state["wrapped"] = _new_layers(pipe, names, active_before)
        setattr(pipe, _STATE_ATTR, state)
        unload_character_lora(pipe)  # whatever half-loaded goes again
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"this character's LoRA does not load into {type(pipe).__name__} ({first[:200]})") from None
    state["wrapped"] = _new_layers(pipe, names, active_before)  # unwrapped again on unload
    setattr(pipe, _STATE_ATTR, state)
    # diffusers activates only the new adapter: every layer gets back the adapters it had active, plus this one
    for n, model in _components(pipe, names):
        prev = active_before.get(n, {})
        for layer_name, layer in model.named_modules():
            if layer_name in prev or adapter_name in getattr(layer, "scaling", {}):
                want = [a for a in prev.get(layer_name, []) if a != adapter_name]
                if adapter_name in getattr(layer, "scaling", {}):
                    want.append(adapter_name)
                if list(layer.active_adapters) != want:
                    layer.set_adapter(want)
    set_character_lora_scale(pipe, scale, adapter_name=adapter_name)
    return {k: v for k, v in state.items() if k not in ("before", "wrapped")}


def unload_character_lora(pipe) -> bool:
    """Remove the character adapter, returning `pipe` to its state before `load_character_lora` (renders equal a
    pipeline that never had it, bit for bit). Components that held no adapter before lose their peft wrappers
    too; other adapters keep their weights and activation. Returns False when no character LoRA was loaded."""
    state = loaded_character_lora(pipe)
    if state is None:
        return False
    from diffusers.utils import recurse_remove_peft_layers

    adapter = state["adapter"]
    for name, model in _components(pipe, state["components"]):
        had = state["before"].get(name, [])
        if adapter not in _adapters_of(model):
            continue
        if not had:  # the character adapter was the only one: unwrap the peft layers, as before loading
            recurse_remove_peft_layers(model)
            if hasattr(model, "peft_config"):
                del model.peft_config
            vars(model).pop("_hf_peft_config_loaded", None)  # no peft_config is left: the flag must not say one is
            continue
        for layer in _tuner_layers(model):
            if adapter in getattr(layer, "scaling", {}):
                active = [a for a in layer.active_adapters if a != adapter]
                layer.delete_adapter(adapter)
                layer.set_adapter(active)
        for layer_name in state.get("wrapped", {}).get(name, []):  # put the original modules back
            parent_name, _, child = layer_name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, getattr(parent, child).get_base_layer())
        model.peft_config.pop(adapter, None)
    delattr(pipe, _STATE_ATTR)
    return True


__all__ = [
    "CHARACTER_ADAPTER",
    "MAX_SCALE",
    "check_character_lora",
    "load_character_lora",
    "loaded_character_lora",
    "lora_target_of",
    "reapply_character_lora",
    "set_character_lora_scale",
    "unload_character_lora",
]
