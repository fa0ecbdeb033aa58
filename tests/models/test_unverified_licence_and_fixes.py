"""--allow-unverified is loud and recorded in outputs; commercial mode refuses NC licences; every suggested fix
exists. Real tiny-twin files, real diffusers loads and a real render."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
from weights_helpers import flip_byte

from engine._core.errors import (
    ConfigError,
    InputError,
    LicenseRefused,
    UnverifiedWeightsWarning,
    WeightsIntegrityError,
)
from engine.models.hashing import sha256_file
from engine.models.store import digest_of
from engine.pipelines.loading import component_record, load_pipeline
from engine.presets import load_preset

UNET = "unet/diffusion_pytorch_model.safetensors"


def test_unverified_load_warns_and_outputs_record_the_loaded_hashes(tiny_weights, cpu_plan):
    from engine.pipelines.render import render_still

    store = tiny_weights("tiny-sdxl-base")
    locked = store.component_hashes("tiny-sdxl-base")
    unet = store.component_dir("tiny-sdxl-base") / UNET
    flip_byte(unet, keep_times=True)  # one float of the UNet's tensor data
    preset = load_preset("tiny-stills-sdxl", store.settings.presets_dir)
    with pytest.raises(WeightsIntegrityError, match=rf"{UNET} is modified"):
        load_pipeline(preset, store, cpu_plan)

    lenient = tiny_weights("tiny-sdxl-base", allow_unverified_weights=True)
    with pytest.warns(UnverifiedWeightsWarning, match="tiny-sdxl-base"):
        loaded = load_pipeline(preset, lenient, cpu_plan)
    base = loaded.models["base"]
    assert base["unverified"] is True
    assert base["files"][UNET] == sha256_file(unet) != locked[UNET]  # what was read, not what the lock says
    assert base["sha256"] == digest_of(base["files"]) and base["locked_sha256"] == digest_of(locked)
    assert base["mismatched"] == [UNET]
    meta = render_still(loaded, "a man", seed=1, steps=1, output_type="np").metadata
    assert meta["models"]["base"]["unverified"] is True and meta["models"]["base"]["files"][UNET] == sha256_file(unet)


def test_verified_records_carry_no_unverified_flag(tiny_weights):
    store = tiny_weights("tiny-instantid-ip-adapter")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnverifiedWeightsWarning)
        store.require("tiny-instantid-ip-adapter")
    rec = component_record(store, "tiny-instantid-ip-adapter")
    assert "unverified" not in rec and rec["files"] == store.component_hashes("tiny-instantid-ip-adapter")


def test_commercial_mode_refuses_non_commercial_licences(tiny_weights):
    store = tiny_weights("tiny-instantid-ip-adapter", commercial_use=True)
    lic = store.manifest.get("antelopev2").license.name
    with pytest.raises(LicenseRefused) as e:
        store.require("antelopev2")  # refused for its licence, before anything is looked up on disk
    msg = str(e.value)
    assert "\n" not in msg and "'antelopev2'" in msg and lic in msg and "FLX_COMMERCIAL_USE" in msg
    assert "--commercial" in msg
    for cid in ("ip-adapter-faceid-plusv2-sdxl", "instantid-ip-adapter", "instantid-controlnet", "buffalo_l"):
        with pytest.raises(LicenseRefused, match=cid):
            store.require(cid)
    assert store.require("tiny-instantid-ip-adapter").is_dir()  # commercial_use: true licences load


def _flx(tmp_path, *args, **env):
    full = dict(os.environ, FLX_HOME=str(tmp_path / "home"), FLX_WEIGHTS_DIR=str(tmp_path / "weights"), COLUMNS="250")
    full.update(env)
    return subprocess.run([sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True, env=full)


def _row(out: str, cid: str) -> str:
    return next(line for line in out.splitlines() if f" {cid} " in line)


def test_weights_list_says_what_commercial_use_may_load(tmp_path):
    plain = _flx(tmp_path, "weights", "list")
    assert plain.returncode == 0, plain.stderr
    assert "commercial" in plain.stdout
    assert " no " in _row(plain.stdout, "antelopev2") and " yes " in _row(plain.stdout, "sdxl-base-1.0")
    on = _flx(tmp_path, "weights", "list", FLX_COMMERCIAL_USE="1")
    assert on.returncode == 0, on.stderr
    assert "no (refused)" in _row(on.stdout, "antelopev2") and "refused" not in _row(on.stdout, "sdxl-base-1.0")


def test_fixes_for_tiny_twins_name_make_tiny_weights_force(tiny_weights, make_tiny_weights_module):
    from engine.models.fetch import fetch

    store = tiny_weights("tiny-instantid-controlnet")
    flip_byte(store.component_dir("tiny-instantid-controlnet") / "ControlNetModel" / "config.json", offset=2)
    with pytest.raises(WeightsIntegrityError) as e:
        store.require("tiny-instantid-controlnet")
    assert "make_tiny_weights.py --force" in str(e.value) and "flx weights fetch" not in str(e.value)
    with pytest.raises(InputError, match="make_tiny_weights.py --force"):
        fetch(store, "tiny-instantid-controlnet", force=True)
    # following the fix works
    make_tiny_weights_module.main(["--weights-dir", str(store.root), "--force", "--only", "tiny-instantid-controlnet"])
    assert store.require("tiny-instantid-controlnet").is_dir()


def test_unreadable_lock_names_fixes_that_exist(tiny_weights, make_tiny_weights_module, tmp_path):
    store = tiny_weights("tiny-instantid-ip-adapter")
    store.lock_path.write_text("{not json")
    with pytest.raises(ConfigError) as e:
        store.require("tiny-instantid-ip-adapter")
    msg = str(e.value)
    assert "--relock" not in msg and "\n" not in msg
    assert (
        "flx weights fetch ID --force" in msg and "flx weights import" in msg and "make_tiny_weights.py --force" in msg
    )
    # each named command exists with the flags it is given
    for cmd in (("weights", "fetch", "--help"), ("weights", "import", "--help")):
        r = _flx(tmp_path, *cmd)
        assert r.returncode == 0 and ("--force" in r.stdout if "fetch" in cmd else "--id" in r.stdout)
    # and following it re-registers the component
    store.lock_path.rename(store.lock_path.with_suffix(".broken"))
    r = _flx(
        tmp_path,
        "weights",
        "import",
        str(store.root / "tiny-instantid-ip-adapter"),
        "--id",
        "tiny-instantid-ip-adapter",
    )
    assert r.returncode == 0, r.stderr
    assert store.require("tiny-instantid-ip-adapter").is_dir()
    assert json.loads(store.lock_path.read_text())["lock_version"] == 2
