"""Training a character's LoRA and storing it with the character: the runner under `Engine.train`.

The trainer (`engine.training`) knows pipelines, images and scores; this runner adds what only the facade knows:
which library character, which warm pipeline, and where the result goes (a new character version carrying the LoRA,
so its `.flx` takes it to other machines).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine._core.errors import InputError

if TYPE_CHECKING:
    from engine.api import Engine


@dataclass
class TrainOutcome:
    character: Any | None  # the new version carrying the LoRA; None when the run was stopped (resume it)
    result: Any  # engine.training.TrainResult


def train_character(
    engine: Engine, name: str, spec, out_dir: Path, *, progress=None, should_stop=None, resume: bool = True
) -> TrainOutcome:
    from engine.characters import attach_lora
    from engine.training.dataset import check_source
    from engine.training.trainer import check_trainable_preset, train_character_lora

    if Path(name).suffix.lower() == ".flx":
        raise InputError(
            f"'{name}' is a .flx file: import it first (`flx character import {name}`), then train the library "
            "character (the LoRA is stored as its new version)"
        )
    character = engine.character(name)
    check_trainable_preset(engine.preset(spec.preset))  # what the user can get wrong, before the weights load
    check_source(character, spec.source)
    loaded = engine.pipeline(spec.preset)
    result = train_character_lora(
        loaded,
        spec,
        out_dir,
        character=character,
        analyzer=engine.analyzer(),
        progress=progress,
        should_stop=should_stop,
        resume=resume,
    )
    if result.lora_bytes is None:
        return TrainOutcome(None, result)
    new = attach_lora(character, result.lora_bytes, result.info["base_model_id"], info=result.info)
    with engine.library() as lib:
        if lib.get(character.id).version != character.version:
            raise InputError(
                f"character '{name}' changed while it trained: the LoRA is in {out_dir}; run `flx train {name}` "
                "again to store it (the finished run is reused)"
            )
        lib.add(new)
    return TrainOutcome(new, result)
