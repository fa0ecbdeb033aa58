"""Face-consistency scoring: does every frame of a still set, clip or sequence show the character?

Entry points: `score_media` (files), `score_frames` (frames in memory), `score_sequence` (consecutive
clips); reports are `ScoreReport` pydantic models; `write_plot` / `write_contact_sheet` draw them.
See docs/scoring.md for the formulas.

Names are imported on first use (PEP 562), so the decoder child process (`engine.scoring._decode`) starts
without loading pydantic, the scorer and the plotting code.
"""

from importlib import import_module
from typing import TYPE_CHECKING

_EXPORTS = {
    "WorstFrames": "consistency",
    "Verdict": "metrics",
    "gate": "metrics",
    "MediaDamage": "schema",
    "reference_from_photos": "reference",
    "summary_lines": "render",
    "write_contact_sheet": "render",
    "write_plot": "render",
    "MediaReport": "schema",
    "ScoreCurve": "schema",
    "ScoreReport": "schema",
    "ScoringOptions": "schema",
    "check_reference": "scorer",
    "opens2v_indices": "scorer",
    "score_frames": "scorer",
    "score_media": "scorer",
    "score_sequence": "scorer",
}

__all__ = [
    "MediaDamage",
    "MediaReport",
    "ScoreCurve",
    "ScoreReport",
    "ScoringOptions",
    "Verdict",
    "WorstFrames",
    "check_reference",
    "gate",
    "opens2v_indices",
    "reference_from_photos",
    "score_frames",
    "score_media",
    "score_sequence",
    "summary_lines",
    "write_contact_sheet",
    "write_plot",
]

if TYPE_CHECKING:
    from .consistency import WorstFrames
    from .metrics import Verdict, gate
    from .reference import reference_from_photos
    from .render import summary_lines, write_contact_sheet, write_plot
    from .schema import MediaDamage, MediaReport, ScoreCurve, ScoreReport, ScoringOptions
    from .scorer import check_reference, opens2v_indices, score_frames, score_media, score_sequence


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
