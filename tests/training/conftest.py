"""The tiny-weights fixtures of tests/pipelines (re-used, not copied), and a character made from the test photos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "_flx_pipelines_conftest", Path(__file__).resolve().parents[1] / "pipelines" / "conftest.py"
)
_pipelines = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pipelines)

tiny_weights_dir = _pipelines.tiny_weights_dir
tiny_settings = _pipelines.tiny_settings
tiny_store = _pipelines.tiny_store
cpu_plan = _pipelines.cpu_plan
make_tiny_weights_module = _pipelines.make_tiny_weights_module


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
