"""scripts/gpu_acceptance.sh covers every preset: each one is rendered, or SKIPped with the reason (never left out)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_acceptance.sh"


def _lists() -> dict[str, set[str]]:
    text = SCRIPT.read_text()
    out: dict[str, set[str]] = {"real": set(), "tiny": set()}
    for mode in ("real", "tiny"):
        block = text.split(f"MODE={mode}", 1)[1].split("fi" if mode == "tiny" else "else", 1)[0]
        for names in re.findall(r'(?:STILLS|IDSTILLS|VIDEOS)="([^"]*)"', block):
            out[mode].update(names.split())
    return out


def test_every_preset_is_in_the_acceptance_run():
    from engine.presets import list_presets

    presets = set(list_presets(REPO / "configs" / "presets"))
    lists = _lists()
    assert lists["tiny"] == {p for p in presets if p.startswith("tiny-")}
    assert lists["real"] == {p for p in presets if not p.startswith("tiny-")}


@pytest.mark.slow
def test_acceptance_script_on_cpu_renders_or_skips_with_the_reason(tmp_path):
    env = dict(os.environ, FLX_HOME=str(tmp_path / "home"), FLX_WEIGHTS_DIR=str(tmp_path / "weights"))
    r = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=1800, cwd=REPO
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for p in ("tiny-stills-sdxl", "tiny-stills-faceid-sdxl", "tiny-stills-instantid-sdxl",
              "tiny-video-wan21-i2v-480p", "tiny-video-wan22-ti2v-5b"):  # fmt: skip
        assert re.search(rf"^PASS  {p} ", r.stdout, re.M), r.stdout
