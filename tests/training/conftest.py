"""Training fixtures: a fresh tiny SDXL (training adds and removes adapters) and a character from the test photos.
The tiny weights themselves are the session fixtures of tests/conftest.py."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def analyzer():
    from engine.identity.registry import get_analyzer

    return get_analyzer()


@pytest.fixture(scope="session")
def ava(faces_dir, analyzer):
    """A character from two photos of person A (obama.jpg, obama2.jpg): its reference crops are training images."""
    from engine.characters import create_character

    return create_character("ava", [faces_dir / "obama.jpg", faces_dir / "obama2.jpg"], None, analyzer)


@pytest.fixture()
def fresh_sdxl(tiny_settings, tiny_store, cpu_plan):
    """`fresh_sdxl() -> LoadedPipeline`: the tiny SDXL twin loaded anew (training adds and removes adapters)."""
    from engine.pipelines.loading import load_pipeline
    from engine.presets import load_preset

    return lambda: load_pipeline(load_preset("tiny-stills-sdxl", tiny_settings.presets_dir), tiny_store, cpu_plan)
