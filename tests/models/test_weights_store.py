"""Weights lock, verification, import and fetch errors, on real files written with safetensors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine._core.errors import (
    InputError,
    ModelNotFound,
    NetworkUnavailable,
    UnverifiedWeightsWarning,
    WeightsIntegrityError,
)
from engine._core.settings import EngineSettings, repo_root
from engine.models.fetch import fetch, import_weights
from engine.models.manifest import load_manifest
from engine.models.store import WeightsStore

REPO = repo_root()


def _links_to(view: Path, folder: Path) -> dict[str, Path]:
    """{file: real file} of a load view, asserting every entry is a symlink into `folder`."""
    out = {}
    for p in view.rglob("*"):
        if not p.is_dir():
            assert p.is_symlink() and p.resolve().is_relative_to(folder.resolve()), p
            out[p.relative_to(view).as_posix()] = p.resolve()
    return out


def _write_component(folder: Path, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    save_file({"w": torch.randn(64, 64, generator=g)}, str(folder / "ip-adapter.safetensors"))


@pytest.fixture()
def store(tmp_path) -> WeightsStore:
    settings = EngineSettings(home=tmp_path / "home", weights_dir=tmp_path / "weights")
    return WeightsStore(settings)


def test_manifest_is_valid_and_names_real_sources():
    m = load_manifest(REPO / "weights_manifest.json")
    real = [c for c in m.components if not c.is_generated]
    assert {c.role.value for c in real} >= {
        "sdxl-base",
        "ip-adapter-faceid-plusv2-sdxl",
        "instantid-controlnet",
        "wan21-i2v-14b-480p",
        "wan22-ti2v-5b",
        "face-analysis-antelopev2",
    }
    # insightface packs and weights trained on them are flagged non-commercial
    for cid in ("antelopev2", "buffalo_l", "ip-adapter-faceid-plusv2-sdxl", "instantid-ip-adapter"):
        assert m.get(cid).license.commercial_use is False
    # every tiny twin points at a real entry with the same role
    for c in m.components:
        if c.is_generated:
            assert m.get(c.source.twin_of).role == c.role


def test_record_verify_and_detect_tampering(store):
    folder = store.root / "tiny-instantid-ip-adapter"
    _write_component(folder)
    store.record("tiny-instantid-ip-adapter", revision="generated-seed0")
    view = store.require("tiny-instantid-ip-adapter")
    assert _links_to(view, folder) == {"ip-adapter.safetensors": (folder / "ip-adapter.safetensors").resolve()}
    assert [s.state for s in store.verify()] == ["verified"]

    # flip one byte in the middle of the tensor data, keep the size
    f = folder / "ip-adapter.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))

    (st,) = store.verify(["tiny-instantid-ip-adapter"])
    assert st.state == "corrupt"
    assert st.problems[0].path == "ip-adapter.safetensors" and st.problems[0].problem == "modified"
    with pytest.raises(WeightsIntegrityError, match="ip-adapter.safetensors is modified"):
        store.require("tiny-instantid-ip-adapter")

    # explicit override loads anyway, loudly
    lenient = WeightsStore(
        EngineSettings(home=store.settings.home, weights_dir=store.root, allow_unverified_weights=True)
    )
    with pytest.warns(UnverifiedWeightsWarning, match="tiny-instantid-ip-adapter"):
        assert lenient.require("tiny-instantid-ip-adapter") == view


def test_missing_and_unlocked_components(store):
    with pytest.raises(ModelNotFound, match="make_tiny_weights"):
        store.require("tiny-instantid-ip-adapter")
    with pytest.raises(ModelNotFound, match="flx weights fetch sdxl-base-1.0"):
        store.require("sdxl-base-1.0")
    _write_component(store.root / "tiny-instantid-ip-adapter")
    with pytest.raises(WeightsIntegrityError, match="no lock entry"):
        store.require("tiny-instantid-ip-adapter")


def test_import_hub_cache_in_place(store, tmp_path):
    snap = tmp_path / "hub" / "models--InstantX--InstantID" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    g = torch.Generator().manual_seed(1)
    # the real file name is a .bin; any bytes do for registration
    (snap / "ip-adapter.bin").write_bytes(torch.randn(16, generator=g).numpy().tobytes())
    ids = import_weights(store, snap.parent.parent, "instantid-ip-adapter")
    assert ids == ["instantid-ip-adapter"]
    assert store.component_dir("instantid-ip-adapter") == snap.resolve()  # hashed in place, not copied
    assert store.read_lock().components["instantid-ip-adapter"].revision == "abc123"
    assert set(_links_to(store.require("instantid-ip-adapter"), snap)) == {"ip-adapter.bin"}
    with pytest.raises(InputError):
        import_weights(store, tmp_path / "nope")


def test_fetch_offline_gives_one_clear_line(tmp_path):
    settings = EngineSettings(home=tmp_path / "h", weights_dir=tmp_path / "w", offline=True)
    with pytest.raises(NetworkUnavailable, match="copy DIR/sdxl-base-1.0"):
        fetch(WeightsStore(settings), "sdxl-base-1.0")
    with pytest.raises(InputError, match="make_tiny_weights"):
        fetch(WeightsStore(settings), "tiny-sdxl-base")


def _flx(*args, env_extra=None, tmp_path=None):
    import os

    env = dict(os.environ, FLX_HOME=str(tmp_path / "home"), FLX_WEIGHTS_DIR=str(tmp_path / "weights"))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True, env=env)


def test_cli_verify_reports_tampering_in_one_line(tmp_path):
    settings = EngineSettings(home=tmp_path / "home", weights_dir=tmp_path / "weights")
    store = WeightsStore(settings)
    folder = store.root / "tiny-instantid-ip-adapter"
    _write_component(folder)
    store.record("tiny-instantid-ip-adapter", revision="generated-seed0")
    ok = _flx("weights", "verify", tmp_path=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "verified" in ok.stdout
    f = folder / "ip-adapter.safetensors"
    b = bytearray(f.read_bytes())
    b[-1] ^= 1
    f.write_bytes(bytes(b))
    bad = _flx("weights", "verify", tmp_path=tmp_path)
    assert bad.returncode == WeightsIntegrityError.exit_code
    assert "ip-adapter.safetensors" in bad.stdout and "modified" in bad.stdout
    err_lines = [line for line in bad.stderr.strip().splitlines() if line.strip()]
    # a generated twin is rebuilt, not fetched: the fix names the right command
    assert len(err_lines) == 1 and "Traceback" not in bad.stderr and "make_tiny_weights.py --force" in err_lines[0]
    listing = _flx("weights", "list", tmp_path=tmp_path)
    assert listing.returncode == 0 and "corrupt" in listing.stdout


def test_cli_unknown_component_and_offline_fetch(tmp_path):
    r = _flx("weights", "fetch", "no-such-model", tmp_path=tmp_path)
    assert r.returncode == ModelNotFound.exit_code and "unknown weights component" in r.stderr
    assert "Traceback" not in r.stderr
    r = _flx("weights", "fetch", "wan21-t2v-1.3b", tmp_path=tmp_path, env_extra={"FLX_OFFLINE": "1"})
    assert r.returncode == NetworkUnavailable.exit_code and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_import_comfyui_models_tree_detects_components(store, tmp_path):
    """A ComfyUI-style `models/` tree: the antelopev2 pack under insightface/models/ is found and hashed in place."""
    pack = tmp_path / "ComfyUI" / "models" / "insightface" / "models" / "antelopev2"
    pack.mkdir(parents=True)
    for name in ("glintr100.onnx", "scrfd_10g_bnkps.onnx", "genderage.onnx"):
        (pack / name).write_bytes(name.encode() * 100)
    ids = import_weights(store, tmp_path / "ComfyUI" / "models")
    assert ids == ["antelopev2"]
    # genderage.onnx is in the pack but not in the manifest: it is neither locked nor visible to the loader
    assert set(_links_to(store.require("antelopev2"), pack)) == {"glintr100.onnx", "scrfd_10g_bnkps.onnx"}
    assert set(store.component_hashes("antelopev2")) == {"glintr100.onnx", "scrfd_10g_bnkps.onnx"}
    with pytest.raises(ModelNotFound, match="no weights component found"):
        import_weights(store, tmp_path / "ComfyUI" / "models", "sdxl-base-1.0")


def test_import_of_the_weights_root_skips_twins_and_load_views(tiny_weights):
    """Detecting components under the weights root must not register a tiny twin's folder (same layout) or a
    load view (`.views/...`, symlinks) as the real component."""
    store = tiny_weights("tiny-clip-vision-h")
    assert store.require("tiny-clip-vision-h").is_dir()  # builds .views/tiny-clip-vision-h/<key>/models/...
    with pytest.raises(ModelNotFound, match="no weights component found"):
        import_weights(store, store.root)
    assert "clip-vision-h" not in store.read_lock().components
