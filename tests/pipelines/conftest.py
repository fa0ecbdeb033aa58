"""Tiny random-weight models for pipeline tests, built once per session by scripts/make_tiny_weights.py.

Set FLX_TINY_WEIGHTS_CACHE to a folder to reuse the build across runs (components already
present and verified there are not rebuilt).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"


def _import_make_tiny_weights():
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    import make_tiny_weights

    return make_tiny_weights


@pytest.fixture(scope="session")
def make_tiny_weights_module():
    """The scripts/make_tiny_weights.py module (scripts/ is not a package)."""
    return _import_make_tiny_weights()


@pytest.fixture(scope="session")
def arcface_builder_available() -> bool:
    return (SCRIPTS / "tiny_weights" / "arcface.py").exists()


@pytest.fixture(scope="session")
def tiny_weights_dir(tmp_path_factory) -> Path:
    from engine._core.settings import EngineSettings

    cache = os.environ.get("FLX_TINY_WEIGHTS_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("tiny-weights")
    settings = EngineSettings(home=root.parent / "flx-home", weights_dir=root)
    _import_make_tiny_weights().make_tiny_weights(settings, log=lambda line: None)
    return root


@pytest.fixture(scope="session")
def tiny_settings(tiny_weights_dir, tmp_path_factory):
    from engine._core.settings import EngineSettings

    home = tmp_path_factory.mktemp("flx-home")
    return EngineSettings(home=home, weights_dir=tiny_weights_dir, outputs_dir=home / "outputs")


@pytest.fixture(scope="session")
def tiny_store(tiny_settings):
    from engine.models.store import WeightsStore

    return WeightsStore(tiny_settings)


@pytest.fixture(scope="session")
def cpu_plan():
    from engine.runtime import DeviceInfo, plan_runtime

    return plan_runtime(0.1, "auto", device_info=DeviceInfo(cuda_available=False))


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
