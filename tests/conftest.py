"""Shared fixtures. Test photos live outside the repo (FLX_TESTDATA or ../shared/testdata/faces)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
