"""`flx batch validate`: everything a job needs, checked before any GPU time is spent.

The file itself was validated when it was read (every key against the schema of its kind). Here the machine is
asked: does every character exist (library name/id, or a readable `.flx`), does every preset exist, fit the shot's
kind and run on this device, is every weights component it loads present and verified (and allowed in commercial
mode), and do the files the shots read (start/end images, audio, media to score) exist. Every problem is listed,
not only the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engine._core.errors import EngineError

from .runner import shot_preset
from .specs import JobFile, ScoreArgs, media_files, shot_values

if TYPE_CHECKING:
    from engine.api import Engine

STILL_KINDS = ("still", "pack")
VIDEO_KINDS = ("video", "sequence")


def validate_job(engine: Engine, job: JobFile) -> list[str]:
    """One line per problem (empty: the job can run here)."""
    problems: list[str] = []
    for alias, spec in job.characters.items():
        try:
            engine.character(spec)
        except EngineError as e:
            problems.append(f"character '{alias}': {e}")
    checked: dict[str, str | None] = {}
    for shot in job.shots:
        where = f"shot '{shot.id}' ({shot.kind})"
        preset_name = shot_preset(job, shot)
        if preset_name and preset_name not in checked:
            checked[preset_name] = _check_preset(engine, preset_name)
        if preset_name and checked[preset_name]:
            problems.append(f"{where}: {checked[preset_name]}")
        elif preset_name:
            pipeline = engine.preset(preset_name).pipeline
            is_video = pipeline.startswith("wan")
            if shot.kind in STILL_KINDS and is_video:
                problems.append(f"{where}: preset '{preset_name}' makes video: use a stills preset")
            if shot.kind in VIDEO_KINDS and not is_video:
                problems.append(f"{where}: preset '{preset_name}' makes stills: use a video preset")
        values = shot_values(job, shot)
        for key in ("start_image", "end_image", "audio"):
            if isinstance(values.get(key), str) and not Path(values[key]).is_file():
                problems.append(f"{where}: {key} {values[key]} does not exist")
        for i, seg in enumerate(values.get("shots") or [] if shot.kind == "sequence" else []):
            for key in ("start_image", "end_image"):
                if isinstance(seg, dict) and isinstance(seg.get(key), str) and not Path(seg[key]).is_file():
                    problems.append(f"{where}: shots[{i}].{key} {seg[key]} does not exist")
        if shot.kind == "train":
            source = values.get("source")
            if isinstance(source, str) and source not in ("pack", "refs") and not Path(source).is_dir():
                problems.append(f"{where}: training folder {source} does not exist")
        if shot.kind == "score":
            try:
                media_files(ScoreArgs.model_validate(values).media)
            except EngineError as e:
                problems.append(f"{where}: {e}")
    return problems


def _check_preset(engine: Engine, name: str) -> str | None:
    """None when the preset exists, runs on this device and every component is present and verified."""
    try:
        preset = engine.preset(name)
        engine.plan(preset)
        for cid in sorted(set(preset.components.ids().values())):
            engine.store.require(cid)
    except EngineError as e:
        return str(e)
    return None


__all__ = ["validate_job"]
