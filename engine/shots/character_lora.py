"""A shot's use of a character's own identity LoRA (`Character.lora`, made by `flx train`): which character brings
it, the checks before any weights load, the trigger token in the prompt, loading it for the shot (and unloading it
after, so the Engine's cached pipeline is exactly as before) and the record in the output metadata.

One character LoRA per image: the LoRA changes the whole model, not one region, so two would blend both people.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from engine._core.errors import InputError

TARGET_OF_TASK = {"still": "sdxl-unet", "video": "wan-transformer"}


@dataclass
class CharacterLoraUse:
    """The character whose LoRA a shot applies, at `scale`, checked against the preset's base model."""

    character: Any  # engine.characters.Character with `.lora` (data attached)
    scale: float
    preset_base_id: str
    preset_base_sha256: str | None = None
    accepts: tuple[str, ...] = ()  # other bases whose LoRAs the preset's base takes (manifest `accepts_loras_of`)

    @property
    def trigger(self) -> str | None:
        return self.character.lora.trigger

    def prompt(self, prompt: str) -> str:
        """`prompt` with the LoRA's trigger token first (unless the prompt already holds it as a word)."""
        t = self.trigger
        if not t or re.search(rf"(?<!\w){re.escape(t)}(?!\w)", prompt):
            return prompt
        return f"{t}, {prompt}" if prompt else t

    def info(self) -> dict[str, Any]:
        return self.character.lora.model_dump(mode="json")

    def record(self) -> dict[str, Any]:
        """What the output metadata says about the LoRA: whose (id + version), which file (sha256), how strong,
        trained on what."""
        lora = self.character.lora
        return {
            "character_id": self.character.id,
            "version": self.character.version,
            "name": self.character.name,
            "sha256": lora.sha256,
            "scale": self.scale,
            "base_model_id": lora.base_model_id,
            "base_model_sha256": lora.base_model_sha256,
            "target": lora.target,
            "rank": lora.rank,
            "alpha": lora.alpha,
            "trigger": lora.trigger,
            "steps": lora.steps,
            "best_likeness": lora.best_likeness,
        }

    @contextmanager
    def applied(self, loaded) -> Iterator[dict[str, Any]]:
        """Load the LoRA into `loaded.pipe` for the block; unload it after, whatever happens."""
        from engine.pipelines.character_lora import load_character_lora, unload_character_lora

        base = loaded.models.get("base", {}).get("sha256") or self.preset_base_sha256
        loaded_record = load_character_lora(
            loaded.pipe,
            self.character.lora.data,
            self.info(),
            preset_base_id=self.preset_base_id,
            preset_base_sha256=base,
            scale=self.scale,
            accepts=self.accepts,
        )
        try:
            yield loaded_record
        finally:
            unload_character_lora(loaded.pipe)


def character_lora_use(
    characters: Sequence[Any], scale: float | None, preset, store=None, *, flag: str = "--character-lora"
) -> CharacterLoraUse | None:
    """The shot's `CharacterLoraUse` (None when `scale` is None), checked before any weights load.

    Raises:
        `InputError`: no character given, no character with a LoRA (the fix: `flx train NAME`), or more than one.
        `ConfigError`: the LoRA was trained for another base model than the preset's (naming both).
    """
    if scale is None:
        return None
    from engine.pipelines.character_lora import check_character_lora

    if not characters:
        raise InputError(f"{flag} applies a character's own LoRA: pass --character NAME (a character with a LoRA)")
    with_lora = [c for c in characters if c.lora is not None]
    if not with_lora:
        names = ", ".join(f"'{c.name}'" for c in characters)
        first = characters[0].name
        raise InputError(
            f"character {names} has no LoRA: train one with `flx train {first}`, or render without {flag}"
            if len(characters) == 1
            else f"none of the characters {names} has a LoRA: train one with `flx train {first}`"
        )
    if len(with_lora) > 1:
        names = " and ".join(f"'{c.name}'" for c in with_lora[:2])
        raise InputError(
            f"characters {names} both have a LoRA, and an image takes one character LoRA (it changes the whole "
            "model): render them without it, or one per image"
        )
    ch = with_lora[0]
    if ch.lora.data is None:
        raise InputError(f"character '{ch.name}' records a LoRA but holds no LoRA data: re-import its .flx")
    base_id = preset.components.base
    base_sha = store.component_digest(base_id) if store is not None else None
    accepts = tuple(store.manifest.get(base_id).accepts_loras_of) if store is not None else ()
    check_character_lora(
        ch.lora.model_dump(mode="json"),
        preset_base_id=base_id,
        preset_base_sha256=base_sha,
        target=TARGET_OF_TASK.get(preset.task),
        accepts=accepts,
    )
    return CharacterLoraUse(
        character=ch, scale=float(scale), preset_base_id=base_id, preset_base_sha256=base_sha, accepts=accepts
    )


__all__ = ["CharacterLoraUse", "character_lora_use"]
