"""Tiny-weight builders: deterministic bytes, original layouts, atomic placement."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from engine._core.settings import repo_root

sys.path.insert(0, str(repo_root() / "scripts"))

import make_tiny_weights
from tiny_weights import BUILDERS


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_every_manifest_builder_exists():
    from engine.models.manifest import load_manifest

    manifest = load_manifest(repo_root() / "weights_manifest.json")
    names = {c.source.builder for c in manifest.components if c.is_generated}
    assert names <= set(BUILDERS)


@pytest.mark.parametrize(
    "name", ["sdxl", "ip_adapter_faceid_plusv2_sdxl", "clip_vision_h", "instantid_controlnet", "wan21_i2v"]
)
def test_builders_are_deterministic_from_the_seed(tmp_path, name):
    BUILDERS[name](tmp_path / "a", 0)
    BUILDERS[name](tmp_path / "b", 0)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a and a == b
    BUILDERS[name](tmp_path / "c", 1)
    weights = [k for k in a if k.endswith(".safetensors")]
    assert any(a[k] != _digest(tmp_path / "c")[k] for k in weights)


def test_failed_build_leaves_nothing(tmp_path):
    def broken(out_dir: Path, seed: int) -> None:
        (out_dir / "half.safetensors").write_bytes(b"x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        make_tiny_weights._build_atomically(broken, tmp_path / "tiny-x", 0)
    assert list(tmp_path.iterdir()) == []


def test_force_rebuild_swaps_the_folder(tmp_path):
    dest = tmp_path / "tiny-clip"
    make_tiny_weights._build_atomically(BUILDERS["clip_vision_h"], dest, 0)
    (dest / "stale.txt").write_text("old")
    make_tiny_weights._build_atomically(BUILDERS["clip_vision_h"], dest, 0)
    assert not (dest / "stale.txt").exists() and (dest / "models/image_encoder/model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-clip"]


def test_only_rejects_unknown_ids(tmp_path):
    from engine._core.errors import InputError
    from engine._core.settings import EngineSettings

    settings = EngineSettings(home=tmp_path, weights_dir=tmp_path / "w")
    with pytest.raises(InputError, match="sdxl-base-1.0"):
        make_tiny_weights.make_tiny_weights(settings, only=["sdxl-base-1.0"], log=lambda line: None)


def test_cli_builds_one_component(tmp_path, capsys):
    rc = make_tiny_weights.main(["--weights-dir", str(tmp_path / "w"), "--only", "tiny-instantid-ip-adapter"])
    assert rc == 0
    assert (tmp_path / "w" / "tiny-instantid-ip-adapter" / "ip-adapter.safetensors").is_file()
    assert "1 component(s) built" in capsys.readouterr().out
