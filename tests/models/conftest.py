"""Fixtures for weights-store tests: fresh tiny-twin weights roots (real files from scripts/make_tiny_weights.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture()
def tiny_weights(tmp_path):
    """`tiny_weights(*ids, **settings) -> WeightsStore` over a weights root of this test holding those tiny twins
    (built once per test; later calls only change the settings)."""
    from engine._core.settings import EngineSettings
    from engine.models.store import WeightsStore

    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    import make_tiny_weights

    built: set[str] = set()

    def build(*ids: str, **overrides) -> WeightsStore:
        settings = EngineSettings(home=tmp_path / "home", weights_dir=tmp_path / "weights", **overrides)
        todo = [i for i in ids if i not in built]
        if todo:
            make_tiny_weights.make_tiny_weights(settings, only=todo, log=lambda line: None)
            built.update(todo)
        return WeightsStore(settings)

    return build


@pytest.fixture(scope="session")
def cpu_plan():
    from engine.runtime import DeviceInfo, plan_runtime

    return plan_runtime(0.1, "auto", device_info=DeviceInfo(cuda_available=False))


@pytest.fixture()
def make_tiny_weights_module():
    """The scripts/make_tiny_weights.py module (scripts/ is not a package)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    import make_tiny_weights

    return make_tiny_weights
