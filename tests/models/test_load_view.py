"""`require()` returns a view holding only the locked files, so loaders never read bytes the lock does not cover.

Real diffusers / transformers / onnxruntime loads of tiny twins built by scripts/make_tiny_weights.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from weights_helpers import INDEX, SHARD, drop_bogus_shard

from engine.models.fetch import import_weights
from engine.pipelines.loading import load_pipeline
from engine.presets import load_preset


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())


def _all_equal(module: torch.nn.Module, value: float) -> bool:
    return all(bool((p == value).all()) for p in module.parameters())


def test_extra_index_and_shard_in_unet_are_never_loaded(tiny_weights, cpu_plan):
    from diffusers import UNet2DConditionModel

    store = tiny_weights("tiny-sdxl-base")
    unet_dir = store.component_dir("tiny-sdxl-base") / "unet"
    locked = load_file(str(unet_dir / "diffusion_pytorch_model.safetensors"))
    drop_bogus_shard(unet_dir)
    # The folder itself is poisoned: diffusers prefers the index and loads the shard.
    assert _all_equal(UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True), 0.125)

    loaded = load_pipeline(load_preset("tiny-stills-sdxl", store.settings.presets_dir), store, cpu_plan)
    sd = loaded.pipe.unet.state_dict()
    assert set(locked) <= set(sd)
    assert all(torch.equal(sd[k].to(v.dtype), v) for k, v in locked.items())  # the locked bytes, not the shard
    view = store.require("tiny-sdxl-base")
    assert _files(view / "unet") == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert set(_files(view)) == set(store.component_hashes("tiny-sdxl-base"))
    assert (view / "unet" / "diffusion_pytorch_model.safetensors").resolve() == (
        unet_dir / "diffusion_pytorch_model.safetensors"
    ).resolve()
    assert loaded.models["base"]["files"] == store.component_hashes("tiny-sdxl-base")


def test_wan_i2v_loads_locked_transformer_and_clip_encoder_through_the_view(tiny_weights, cpu_plan):
    store = tiny_weights("tiny-wan21-i2v")
    folder = store.component_dir("tiny-wan21-i2v")
    locked = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    drop_bogus_shard(folder / "transformer", value=0.25)
    loaded = load_pipeline(load_preset("tiny-video-wan21-i2v-480p", store.settings.presets_dir), store, cpu_plan)
    sd = loaded.pipe.transformer.state_dict()
    assert all(torch.equal(sd[k].to(v.dtype), v) for k, v in locked.items())
    assert not _all_equal(loaded.pipe.transformer, 0.25)
    # the CLIP image encoder came through transformers' from_pretrained on the view's image_encoder/
    enc = load_file(str(folder / "image_encoder" / "model.safetensors"))
    esd = loaded.pipe.image_encoder.state_dict()
    assert any(torch.equal(esd[k], v) for k, v in enc.items() if k in esd)
    view = store.require("tiny-wan21-i2v")
    assert SHARD not in _files(view / "transformer") and INDEX not in _files(view / "transformer")


def _hub_snapshot(src: Path, repo: Path, sha: str = "0123456789abcdef") -> Path:
    """Lay `src` out as a Hub cache repo: content in blobs/<sha256>, snapshot entries are relative symlinks."""
    snap = repo / "snapshots" / sha
    for f in sorted(src.rglob("*")):
        if f.is_file():
            blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, blob)
            link = snap / f.relative_to(src)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


def test_imported_full_hub_snapshot_loads_only_the_manifest_files(tiny_weights, tmp_path, cpu_plan):
    """A whole Hub snapshot (fp32 + fp16 files, a sharded variant) imported as sdxl-base-1.0: the lock lists the
    fp16 files only, and the load reads exactly those, although diffusers would pick the shards in the snapshot."""
    from diffusers import StableDiffusionXLPipeline

    store = tiny_weights("tiny-sdxl-base")
    stage = tmp_path / "stage"
    shutil.copytree(store.component_dir("tiny-sdxl-base"), stage)
    for sub, name in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model")):
        (stage / sub / f"{name}.safetensors").rename(stage / sub / f"{name}.fp16.safetensors")
    for sub in ("text_encoder", "text_encoder_2"):
        (stage / sub / "model.safetensors").rename(stage / sub / "model.fp16.safetensors")
    locked = load_file(str(stage / "unet" / "diffusion_pytorch_model.fp16.safetensors"))
    unet = stage / "unet"
    drop_bogus_shard(
        unet,
        "diffusion_pytorch_model.fp16.safetensors",
        shard="diffusion_pytorch_model.fp16-00001-of-00001.safetensors",
        index="diffusion_pytorch_model.safetensors.index.fp16.json",
    )
    drop_bogus_shard(unet, "diffusion_pytorch_model.fp16.safetensors", shard="diffusion_pytorch_model.safetensors")
    (stage / "README.md").write_text("the rest of the repo")
    repo = tmp_path / "hub" / "models--stabilityai--stable-diffusion-xl-base-1.0"
    snap = _hub_snapshot(stage, repo)
    raw = StableDiffusionXLPipeline.from_pretrained(snap, local_files_only=True, variant="fp16")
    assert _all_equal(raw.unet, 0.125)  # the snapshot as a whole is poisoned

    assert import_weights(store, repo, "sdxl-base-1.0") == ["sdxl-base-1.0"]
    hashes = store.component_hashes("sdxl-base-1.0")
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in hashes and "README.md" not in hashes
    assert not any("00001" in rel or rel.endswith(".index.json") for rel in hashes)
    loaded = load_pipeline(load_preset("stills-sdxl", store.settings.presets_dir), store, cpu_plan)
    sd = loaded.pipe.unet.state_dict()
    assert all(torch.equal(sd[k].to(v.dtype), v) for k, v in locked.items())
    view = store.require("sdxl-base-1.0")
    assert set(_files(view)) == set(hashes)
    blob = (snap / "unet" / "diffusion_pytorch_model.fp16.safetensors").resolve()
    assert (view / "unet" / "diffusion_pytorch_model.fp16.safetensors").resolve() == blob


def test_view_is_rechecked_and_rebuilt_on_every_require(tiny_weights):
    store = tiny_weights("tiny-instantid-controlnet")
    cid = "tiny-instantid-controlnet"
    view = store.require(cid)
    assert view.name == "ControlNetModel"  # the manifest's `root` inside the view
    expected = {rel: os.readlink(view.parent / rel) for rel in _files(view.parent)}
    decoy = store.root / "decoy.json"
    decoy.write_text("{}")
    (view / INDEX).write_text("{}")  # a file dropped into the view itself
    (view / "config.json").unlink()
    (view / "config.json").symlink_to(decoy)  # a link re-pointed
    again = store.require(cid)
    assert again == view
    assert {rel: os.readlink(view.parent / rel) for rel in _files(view.parent)} == expected

    # a new lock entry (re-recorded, different bytes) gets a new view; the old one is removed
    folder = store.component_dir(cid)
    shutil.rmtree(folder)
    _builder("instantid_controlnet")(folder, 3)
    store.record(cid, revision="generated-seed3")
    newer = store.require(cid)
    assert newer.parent != view.parent and not view.parent.exists()
    assert (newer / "config.json").resolve() == (folder / "ControlNetModel" / "config.json").resolve()


def _builder(name: str):
    from tiny_weights import BUILDERS

    return BUILDERS[name]


def test_view_falls_back_to_the_home_cache_when_the_root_cannot_hold_it(tiny_weights):
    """`.views` cannot be created in the root (here a file is in the way, as a read-only root would refuse it):
    the view goes under <home>/cache and still holds only the locked files."""
    import onnxruntime as ort

    store = tiny_weights("tiny-arcface-antelopev2")
    (store.root / ".views").write_text("not a folder")
    view = store.require("tiny-arcface-antelopev2")
    assert view.is_relative_to(Path(store.settings.home) / "cache" / "weights-views")
    assert _files(view) == ["glintr100.onnx"]
    sess = ort.InferenceSession(str(view / "glintr100.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()
    assert store.require("tiny-arcface-antelopev2") == view  # found again, not rebuilt elsewhere
