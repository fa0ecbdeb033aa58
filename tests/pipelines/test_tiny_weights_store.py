"""make_tiny_weights writes every generated manifest component, and the store verifies them."""

from __future__ import annotations

import pytest


def test_every_generated_component_is_built_and_verified(tiny_store, arcface_builder_available):
    generated = [c for c in tiny_store.manifest.components if c.is_generated]
    assert len(generated) >= 10
    for entry in generated:
        if entry.source.builder.startswith("arcface") and not arcface_builder_available:
            continue  # reported by test_arcface_twin_built
        path = tiny_store.require(entry.id)
        assert path.is_dir()
        lock = tiny_store.read_lock().components[entry.id]
        assert lock.revision == f"generated-seed{entry.source.seed}"
        assert tiny_store.component_hashes(entry.id)


def test_arcface_twin_built(tiny_store, arcface_builder_available):
    if not arcface_builder_available:
        pytest.skip("scripts/tiny_weights/arcface.py (identity engineer's builder) is not there yet")
    path = tiny_store.require("tiny-arcface-antelopev2")
    assert (path / "glintr100.onnx").stat().st_size > 0


def test_rerun_skips_verified_components(tiny_settings, make_tiny_weights_module, arcface_builder_available):
    if not arcface_builder_available:
        pytest.skip("the arcface twin is rebuilt on every run until scripts/tiny_weights/arcface.py exists")
    built = make_tiny_weights_module.make_tiny_weights(tiny_settings, log=lambda line: None)
    assert built == {}


def test_tampered_component_fails_require(make_tiny_weights_module, tmp_path):
    from engine._core.errors import WeightsIntegrityError
    from engine._core.settings import EngineSettings
    from engine.models.store import WeightsStore

    settings = EngineSettings(home=tmp_path / "home", weights_dir=tmp_path / "w")
    mtw = make_tiny_weights_module
    mtw.make_tiny_weights(settings, only=["tiny-instantid-ip-adapter"], log=lambda line: None)
    store = WeightsStore(settings)
    f = store.require("tiny-instantid-ip-adapter") / "ip-adapter.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="tiny-instantid-ip-adapter"):
        store.require("tiny-instantid-ip-adapter")
    # --force rebuilds it and the store accepts it again.
    mtw.make_tiny_weights(settings, only=["tiny-instantid-ip-adapter"], force=True, log=lambda line: None)
    assert store.require("tiny-instantid-ip-adapter").is_dir()
