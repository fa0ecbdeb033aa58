"""Pipeline-test fixtures over the session's tiny weights (`tiny_settings`, `tiny_store`: tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def load_tiny(tiny_settings, tiny_store, cpu_plan):
    """`load_tiny(preset_name) -> LoadedPipeline`, cached per session (pipelines are not mutated by renders)."""
    from engine.pipelines.loading import load_pipeline
    from engine.presets import load_preset

    cache: dict = {}

    def _load(name: str):
        if name not in cache:
            cache[name] = load_pipeline(load_preset(name, tiny_settings.presets_dir), tiny_store, cpu_plan)
        return cache[name]

    return _load


@pytest.fixture(scope="session")
def face_image(faces_dir):
    from PIL import Image

    with Image.open(faces_dir / "obama.jpg") as im:
        return im.convert("RGB")
