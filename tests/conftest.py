"""Shared fixtures. Test photos live outside the repo (FLX_TESTDATA or ../shared/testdata/faces)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def _faces_dir() -> Path:
    env = os.environ.get("FLX_TESTDATA")
    return Path(env) if env else REPO.parent / "shared" / "testdata" / "faces"


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    d = _faces_dir()
    if not (d / "obama.jpg").exists():
        pytest.fail(f"test photos not found in {d}: set FLX_TESTDATA to the testdata/faces folder")
    return d


@pytest.fixture()
def isolated_settings(tmp_path, monkeypatch):
    """EngineSettings pointing every data path into a temp folder."""
    from engine._core.settings import EngineSettings

    monkeypatch.setenv("FLX_HOME", str(tmp_path / "home"))
    return EngineSettings(home=tmp_path / "home", outputs_dir=tmp_path / "outputs")


# ----- tiny random-weight models, built once per session by scripts/make_tiny_weights.py -------------------------
# Set FLX_TINY_WEIGHTS_CACHE to a folder to reuse the build across runs (components already present and verified
# there are not rebuilt).
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


def pytest_configure(config):
    """Under CI (CI=true) the fuzz tests replay a fixed example sequence, so a landing never depends on luck;
    locally they explore new inputs each run. `HYPOTHESIS_PROFILE=deep` runs 20x more examples."""
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, print_blob=True)
    settings.register_profile("deep", max_examples=4000)
    profile = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else None)
    if profile:
        settings.load_profile(profile)


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.slow` runs only with RUN_SLOW=1; `@pytest.mark.gpu` only where CUDA is present. Both are
    skipped with a visible reason otherwise (`pytest -ra` lists them), so CI without a GPU stays green."""
    run_slow = os.environ.get("RUN_SLOW") == "1"
    cuda = None
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: set RUN_SLOW=1 to run it"))
        if "gpu" in item.keywords:
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="gpu: needs a CUDA device (run on a GPU workstation)"))
