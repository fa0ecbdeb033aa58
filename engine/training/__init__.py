"""Character LoRA training (issue #10): a peft LoRA on the SDXL UNet (optionally the text encoders) from the
character's pack, reference crops or a folder, resumable, validated by likeness, exported for diffusers and kohya.

Entry points: `TrainSpec` / `spec_from_values` (settings), `train_character_lora` (the run) -> `TrainResult`.
Modules: spec, dataset, trainer, checkpoint, validation, chart, export. Names import on first use (PEP 562): this
package imports nothing heavy until a name is used.
"""

from importlib import import_module
from typing import TYPE_CHECKING

_EXPORTS = {
    "TrainSpec": "spec",
    "spec_from_values": "spec",
    "TrainResult": "trainer",
    "train_character_lora": "trainer",
    "train_wan_lora": "wan",
    "build_training_set": "dataset",
    "select_best": "validation",
    "Validation": "validation",
}

__all__ = [
    "TrainResult",
    "TrainSpec",
    "Validation",
    "build_training_set",
    "select_best",
    "spec_from_values",
    "train_character_lora",
    "train_wan_lora",
]

if TYPE_CHECKING:
    from .dataset import build_training_set
    from .spec import TrainSpec, spec_from_values
    from .trainer import TrainResult, train_character_lora
    from .validation import Validation, select_best
    from .wan import train_wan_lora


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
