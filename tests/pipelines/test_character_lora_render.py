"""A character's own LoRA on the tiny twins, through diffusers' real loaders and pipelines (nothing mocked).

The LoRA files are made here the way the trainer makes them: peft `add_adapter` on the tiny base (alpha != r, random
`lora_B` so it acts), then diffusers' `save_lora_weights` with the adapter metadata. Latents are compared, not pixels
(the tiny random VAE squashes differences).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from engine._core.errors import ConfigError, InputError

PLAIN, FACEID = "tiny-stills-sdxl", "tiny-stills-faceid-sdxl"
STANDIN_21, STANDIN_22 = "tiny-video-wan21-t2v-14b-standin", "tiny-video-wan22-t2v-a14b-standin"
RANK, ALPHA = 4, 16.0  # alpha/r = 4: a loader that assumed alpha == r would scale the delta 4x too little


def _quiet():
    warnings.simplefilter("ignore")
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()


def _randomise_lora_b(model, std: float) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _save(pipe_cls, layers_kw: dict, tmp_path) -> bytes:
    pipe_cls.save_lora_weights(str(tmp_path), **layers_kw)
    return (tmp_path / "pytorch_lora_weights.safetensors").read_bytes()


@pytest.fixture(scope="module")
def sdxl_lora(tiny_store, tmp_path_factory):
    """(file bytes, the in-memory peft pipeline it was saved from): a LoRA on tiny-sdxl-base, rank 4, alpha 16."""
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    _quiet()
    src = diffusers.StableDiffusionXLPipeline.from_pretrained(
        tiny_store.require("tiny-sdxl-base"), local_files_only=True
    )
    src.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    # attention (where FaceID's LoRA also sits) and the feed-forward out-projection (where it does not)
    cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian",
                     target_modules=["to_q", "to_k", "to_v", "to_out.0", "ff.net.2"])  # fmt: skip
    src.unet.add_adapter(cfg, adapter_name="trained")
    _randomise_lora_b(src.unet, 0.3)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(src.unet, adapter_name="trained"))
    data = _save(
        diffusers.StableDiffusionXLPipeline,
        {"unet_lora_layers": layers, "unet_lora_adapter_metadata": src.unet.peft_config["trained"].to_dict()},
        tmp_path_factory.mktemp("sdxl-lora"),
    )
    return data, src


def _info(data: bytes, base="tiny-sdxl-base", target="sdxl-unet", **kw) -> dict:
    import hashlib

    return {"base_model_id": base, "target": target, "rank": RANK, "alpha": ALPHA, "sha256":
            hashlib.sha256(data).hexdigest(), "trigger": "ohwx", **kw}  # fmt: skip


def _plain_latents(pipe, seed=1):
    return pipe(
        "a portrait", num_inference_steps=3, guidance_scale=5.0, width=64, height=64,
        generator=torch.Generator().manual_seed(seed), output_type="latent",
    ).images  # fmt: skip


def _unet_state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def test_loading_from_bytes_equals_the_trained_peft_model_alpha_included(load_tiny, sdxl_lora, tiny_store):
    """The stored bytes load to exactly the model they were saved from (alpha/r = 4 honoured); the naive route
    (`load_lora_weights(state_dict)`: no header, so alpha = r) differs: the control that this test can fail."""
    import diffusers
    from safetensors.torch import load as load_bytes

    from engine.pipelines.character_lora import load_character_lora, unload_character_lora

    data, src = sdxl_lora
    loaded = load_tiny(PLAIN)
    pipe = loaded.pipe
    src.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    trained = _plain_latents(src)
    before = _plain_latents(pipe)
    rec = load_character_lora(pipe, data, _info(data), preset_base_id="tiny-sdxl-base", scale=1.0)
    try:
        assert rec["adapter"] == "character" and rec["components"] == ["unet"] and rec["scale"] == 1.0
        with_lora = _plain_latents(pipe)
    finally:
        unload_character_lora(pipe)
    assert torch.equal(with_lora, trained)
    assert (with_lora - before).abs().max() > 1e-2

    _quiet()
    naive = diffusers.StableDiffusionXLPipeline.from_pretrained(
        tiny_store.require("tiny-sdxl-base"), local_files_only=True
    )
    naive.set_progress_bar_config(disable=True)
    naive.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    naive.load_lora_weights(load_bytes(data), adapter_name="naive")
    assert (_plain_latents(naive) - trained).abs().max() > 1e-2


def test_scale_zero_equals_no_lora_and_unload_restores_the_cached_pipeline_exactly(load_tiny, sdxl_lora):
    from engine.pipelines.character_lora import (
        load_character_lora,
        loaded_character_lora,
        set_character_lora_scale,
        unload_character_lora,
    )

    data, _ = sdxl_lora
    pipe = load_tiny(PLAIN).pipe
    state, never = _unet_state(pipe), _plain_latents(pipe)
    load_character_lora(pipe, data, _info(data), preset_base_id="tiny-sdxl-base", scale=0.0)
    try:
        zero = _plain_latents(pipe)
        set_character_lora_scale(pipe, 1.0)
        one = _plain_latents(pipe)
        # the same LoRA again only changes the scale (a warm pipeline is not reloaded)
        load_character_lora(pipe, data, _info(data), preset_base_id="tiny-sdxl-base", scale=0.5)
        half = _plain_latents(pipe)
        assert loaded_character_lora(pipe)["scale"] == 0.5
    finally:
        assert unload_character_lora(pipe) is True
    after = _plain_latents(pipe)
    assert torch.equal(zero, never)
    assert not torch.equal(one, never) and not torch.equal(half, one) and not torch.equal(half, never)
    assert torch.equal(after, never)
    got = pipe.unet.state_dict()
    assert list(got) == list(state) and all(torch.equal(got[k], state[k]) for k in state)  # no peft wrappers left
    assert not hasattr(pipe.unet, "peft_config") and loaded_character_lora(pipe) is None
    assert unload_character_lora(pipe) is False


def test_another_base_model_is_refused_naming_both_ids(load_tiny, sdxl_lora):
    from engine.pipelines.character_lora import load_character_lora, loaded_character_lora

    data, _ = sdxl_lora
    pipe = load_tiny(PLAIN).pipe
    with pytest.raises(ConfigError) as e:
        load_character_lora(pipe, data, _info(data, base="sdxl-base-1.0"), preset_base_id="tiny-sdxl-base")
    msg = str(e.value)
    assert "'sdxl-base-1.0'" in msg and "'tiny-sdxl-base'" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="other weights"):
        load_character_lora(pipe, data, _info(data, base_model_sha256="sha256:" + "1" * 64),
                            preset_base_id="tiny-sdxl-base", preset_base_sha256="sha256:" + "2" * 64)  # fmt: skip
    with pytest.raises(ConfigError, match="wan-transformer"):
        load_character_lora(pipe, data, _info(data, target="wan-transformer"), preset_base_id="tiny-sdxl-base")
    assert loaded_character_lora(pipe) is None and not hasattr(pipe.unet, "peft_config")


def test_a_lora_with_text_encoder_layers_loads_exactly_and_unloads_every_component(load_tiny, tiny_store, tmp_path):
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    from engine.pipelines.character_lora import load_character_lora, unload_character_lora

    _quiet()
    src = diffusers.StableDiffusionXLPipeline.from_pretrained(
        tiny_store.require("tiny-sdxl-base"), local_files_only=True
    )
    src.set_progress_bar_config(disable=True)
    torch.manual_seed(1)
    src.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_v"]), adapter_name="t")  # fmt: skip
    te_cfg = LoraConfig(r=2, lora_alpha=6.0, init_lora_weights="gaussian", target_modules=["q_proj", "v_proj"])
    # peft directly (transformers' own add_adapter wants a newer peft than 0.21), as diffusers' loader does
    inject_adapter_in_model(te_cfg, src.text_encoder, adapter_name="t")
    src.text_encoder.peft_config = {"t": te_cfg}
    _randomise_lora_b(src.unet, 0.3)
    _randomise_lora_b(src.text_encoder, 0.5)
    data = _save(diffusers.StableDiffusionXLPipeline, {
        "unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(src.unet, adapter_name="t")),
        "text_encoder_lora_layers": convert_state_dict_to_diffusers(
            get_peft_model_state_dict(src.text_encoder, adapter_name="t")),
        "unet_lora_adapter_metadata": src.unet.peft_config["t"].to_dict(),
        "text_encoder_lora_adapter_metadata": te_cfg.to_dict(),
    }, tmp_path)  # fmt: skip
    pipe = load_tiny(PLAIN).pipe
    src.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    te_state = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    never = _plain_latents(pipe)
    rec = load_character_lora(pipe, data, _info(data, text_encoder=True), preset_base_id="tiny-sdxl-base")
    try:
        assert rec["components"] == ["unet", "text_encoder"]
        assert torch.equal(_plain_latents(pipe), _plain_latents(src))  # both alphas honoured (16/4 and 6/2)
    finally:
        unload_character_lora(pipe)
    assert torch.equal(_plain_latents(pipe), never)
    got = pipe.text_encoder.state_dict()
    assert list(got) == list(te_state) and all(torch.equal(got[k], te_state[k]) for k in te_state)
    assert not getattr(pipe.text_encoder, "_hf_peft_config_loaded", False)


# ------------------------------------------------------------------------------------------- with FaceID


@pytest.fixture(scope="module")
def people(tiny_settings, faces_dir):
    from engine.characters import create_character, reembed
    from engine.identity.registry import get_analyzer

    dlib = get_analyzer()
    out = {}
    for name, photos in (("ava", ["obama.jpg"]), ("bob", ["biden.jpg"])):
        ch = create_character(name, [faces_dir / p for p in photos], None, dlib)
        out[name] = reembed(ch, get_analyzer("tiny-arcface-buffalo_l-w600k_r50", settings=tiny_settings))
    return out


@pytest.fixture(scope="module")
def engine(tiny_settings, people, sdxl_lora, tmp_path_factory):
    """An Engine whose library holds ava with a LoRA (v2), bob without, and bo2 (bob's second LoRA copy)."""
    from engine._core.settings import EngineSettings
    from engine.api import Engine
    from engine.characters import attach_lora

    data, _ = sdxl_lora
    info = {k: v for k, v in _info(data).items() if k != "sha256"}
    eng = Engine(EngineSettings(home=tmp_path_factory.mktemp("lora-home"), weights_dir=tiny_settings.weights_dir))
    with eng.library() as lib:
        lib.add(attach_lora(people["ava"], data, "tiny-sdxl-base", info={**info, "steps": 100, "best_likeness": 70.0}))
        lib.add(people["bob"])
        twin = people["bob"].model_copy(deep=True)
        twin.id, twin.name = "00000000-0000-4000-8000-000000000002", "bo2"
        lib.add(attach_lora(twin, data, "tiny-sdxl-base", info=info))
    return eng


def _faceid_latents(eng, chars, **kw):
    from engine.pipelines.stills_sdxl.render import render_identity_still
    from engine.shots.still import _method_info, identity_input

    preset = eng.preset(FACEID)
    info = _method_info(eng, preset)
    idents = [identity_input(c, info, eng.analyzer()) for c in chars]
    return render_identity_still(eng.pipeline(FACEID), "a portrait", None, 1, idents, output_type="latent", **kw)


def _layers_with(model, *adapters):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer) and all(a in m.scaling for a in adapters)]


def test_with_faceid_both_adapters_act_and_faceids_own_weight_is_kept(engine, people):
    from engine.pipelines.character_lora import load_character_lora, unload_character_lora

    ava = engine.character("ava")
    loaded = engine.pipeline(FACEID)
    pipe = loaded.pipe
    faceid_only = _faceid_latents(engine, [people["ava"]]).images[0]
    keys_before = list(pipe.unet.state_dict())
    shared = _layers_with(pipe.unet, "faceid_0")
    faceid_scaling = [dict(m.scaling) for m in shared]
    load_character_lora(pipe, ava.lora.data, ava.lora.model_dump(), preset_base_id="tiny-sdxl-base", scale=1.0)
    try:
        both = _layers_with(pipe.unet, "faceid_0", "character")
        assert both, "the character LoRA and FaceID's LoRA share no layer: the composition is not exercised"
        assert all(set(m.active_adapters) == {"faceid_0", "character"} for m in both)
        assert len(_layers_with(pipe.unet, "character")) > len(both)  # and layers of its own (ff.net.2)
        assert [m.scaling["faceid_0"] for m in shared] == [s["faceid_0"] for s in faceid_scaling]
        combined = _faceid_latents(engine, [people["ava"]]).images[0]
        # FaceID's LoRA weight changes through diffusers' set_adapters: the character adapter stays active
        changed = _faceid_latents(engine, [people["ava"]], lora_scale=0.5).images[0]
        assert all(set(m.active_adapters) == {"faceid_0", "character"} for m in both)
        _faceid_latents(engine, [people["ava"]], lora_scale=1.0)
        from engine.pipelines.character_lora import set_character_lora_scale

        set_character_lora_scale(pipe, 0.0)
        at_zero = _faceid_latents(engine, [people["ava"]]).images[0]
    finally:
        unload_character_lora(pipe)
    after = _faceid_latents(engine, [people["ava"]]).images[0]
    assert (combined - faceid_only).abs().max() > 1e-2 and not torch.equal(changed, combined)
    assert torch.equal(at_zero, faceid_only) and torch.equal(after, faceid_only)
    assert list(pipe.unet.peft_config) == ["faceid_0"] and list(pipe.unet.state_dict()) == keys_before
    assert [dict(m.scaling) for m in shared] == faceid_scaling and all(
        m.active_adapters == ["faceid_0"] for m in shared
    )


# ------------------------------------------------------------------------------------------- still shots


def test_a_still_with_the_lora_records_it_and_leaves_the_cached_pipeline_clean(engine, tmp_path):
    from engine.shots.still import StillShot, render_still_shot

    ava = engine.character("ava")
    shot = StillShot(preset=PLAIN, prompt="a portrait in a park", characters=["ava"], character_lora=0.8, score=False)
    out = render_still_shot(engine, shot, tmp_path / "a.png")
    meta = out.best.metadata
    rec = meta["character_lora"]
    assert (rec["character_id"], rec["version"], rec["sha256"], rec["scale"], rec["base_model_id"]) == (
        ava.id, ava.version, ava.lora.sha256, 0.8, "tiny-sdxl-base"
    )  # fmt: skip
    assert rec["trigger"] == "ohwx" and meta["prompt"].startswith("ohwx, ")
    assert meta["models"]["character_lora"]["sha256"] == ava.lora.sha256
    assert meta["character"] == {"id": ava.id, "version": ava.version}
    from engine.outputs import read_png_metadata

    assert read_png_metadata(out.path)["character_lora"] == rec  # what the PNG itself says
    pipe = engine.pipeline(PLAIN).pipe
    assert not hasattr(pipe.unet, "peft_config")  # unloaded after the shot


def test_a_still_asking_for_a_lora_the_character_lacks_is_one_line_with_the_fix(engine, tmp_path):
    from engine.shots.still import StillShot, render_still_shot

    with pytest.raises(InputError) as e:
        render_still_shot(engine, StillShot(preset=PLAIN, prompt="x", characters=["bob"], character_lora=1.0),
                          tmp_path / "b.png")  # fmt: skip
    assert "no LoRA" in str(e.value) and "`flx train bob`" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="one character LoRA"):
        render_still_shot(engine, StillShot(preset=FACEID, prompt="x", characters=["ava", "bo2"],
                                            character_lora=1.0), tmp_path / "c.png")  # fmt: skip
    with pytest.raises(InputError, match="--method lora"):
        render_still_shot(engine, StillShot(preset=PLAIN, prompt="x", characters=["ava"]), tmp_path / "d.png")
    with pytest.raises(InputError, match="pass --character"):
        render_still_shot(engine, StillShot(preset=PLAIN, prompt="x", character_lora=1.0), tmp_path / "e.png")


def test_cli_method_lora_renders_the_character_with_its_lora(engine, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from engine.cli.main import app

    monkeypatch.setenv("FLX_HOME", str(engine.settings.home))
    monkeypatch.setenv("FLX_WEIGHTS_DIR", str(engine.settings.weights_dir))
    out = tmp_path / "cli.png"
    res = CliRunner().invoke(app, ["still", "--method", "lora", "--preset", PLAIN, "-c", "ava", "--prompt", "x",
                                   "--out", str(out), "--no-score"])  # fmt: skip
    assert res.exit_code == 0, res.output
    from engine.outputs import read_png_metadata

    meta = read_png_metadata(out)
    assert meta["character_lora"]["scale"] == 1.0 and meta["prompt"].startswith("ohwx")
    import os
    import subprocess
    import sys

    env = dict(os.environ, FLX_WEIGHTS_DIR=str(engine.settings.weights_dir), FLX_HOME=str(engine.settings.home))
    r = subprocess.run([sys.executable, "-m", "engine.cli.main", "still", "--preset", PLAIN, "-c", "bob",
                        "--character-lora", "0.5", "--prompt", "x", "--out", str(tmp_path / "b.png")],
                       capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "`flx train bob`" in lines[0], r.stderr


# ------------------------------------------------------------------------------------------- Wan + Stand-In


def _wan_lora(tiny_store, base: str, tmp_path) -> bytes:
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    _quiet()
    t = diffusers.WanTransformer3DModel.from_pretrained(
        tiny_store.require(base), subfolder="transformer", local_files_only=True
    )
    cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian",
                     target_modules=["to_q", "to_k", "to_v", "to_out.0"])  # fmt: skip
    t.add_adapter(cfg, adapter_name="trained")
    _randomise_lora_b(t, 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(t, adapter_name="trained"))
    return _save(
        diffusers.WanPipeline,
        {"transformer_lora_layers": layers, "transformer_lora_adapter_metadata": t.peft_config["trained"].to_dict()},
        tmp_path,
    )


@pytest.mark.parametrize("name", [STANDIN_21, STANDIN_22])
def test_the_character_lora_acts_on_stand_ins_reference_stream(name, load_tiny, tiny_store, faces_dir, tmp_path,
                                                              monkeypatch):  # fmt: skip
    """Stand-In's reference K/V (a forward of the same peft-wrapped transformer) moves with the character LoRA,
    equals the LoRA-less cache at scale 0 and after unload; Wan 2.2 loads it into `transformer` only."""
    from PIL import Image

    import engine.adapters.standin as standin
    from engine.identity.images import load_image
    from engine.pipelines.character_lora import load_character_lora, set_character_lora_scale, unload_character_lora
    from engine.pipelines.video_wan.reference import render_reference_clip

    loaded = load_tiny(name)
    base = loaded.preset.components.base
    data = _wan_lora(tiny_store, base, tmp_path)
    im = Image.fromarray(load_image(faces_dir / "obama.jpg"))
    photo = np.asarray(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS))
    caches: list[dict] = []
    real_prepare = standin.StandIn.prepare

    def keep(self, references, weights=None, grid=(1, 1, 1)):
        real_prepare(self, references, weights, grid)
        caches.append({i: (k.clone(), v.clone()) for i, (k, v) in self.state.kv.items()})

    monkeypatch.setattr(standin.StandIn, "prepare", keep)

    def run():
        start = len(caches)
        clip = render_reference_clip(loaded, "a man", [(photo, 1.0)], seed=1, output_type="latent")
        return clip.latents, caches[start:]

    plain_latents, plain = run()
    info = _info(data, base=base, target="wan-transformer")
    load_character_lora(loaded.pipe, data, info, preset_base_id=base, scale=1.0)
    try:
        if name == STANDIN_22:
            assert "character" in loaded.pipe.transformer.peft_config
            assert "character" not in (getattr(loaded.pipe.transformer_2, "peft_config", None) or {})
        lora_latents, with_lora = run()
        set_character_lora_scale(loaded.pipe, 0.0)
        _, at_zero = run()
    finally:
        unload_character_lora(loaded.pipe)
    after_latents, after = run()
    assert len(plain) == len(with_lora) == (2 if name == STANDIN_22 else 1)
    first = with_lora[0]
    assert all(not torch.equal(first[i][0], plain[0][i][0]) for i in first)  # every block's reference keys move
    for cache in (at_zero, after):
        for a, b in zip(cache, plain):
            assert all(torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1]) for i in b)
    if name == STANDIN_22:  # the low-noise expert holds no character adapter: its cache is untouched
        assert all(torch.equal(with_lora[1][i][0], plain[1][i][0]) for i in plain[1])
    assert (lora_latents - plain_latents).abs().max() > 1e-3
    assert torch.equal(after_latents, plain_latents)
    assert not hasattr(loaded.pipe.transformer, "peft_config")


def test_a_video_shot_with_the_character_lora_records_it(tiny_settings, tiny_store, faces_dir, tmp_path):
    from engine._core.settings import EngineSettings
    from engine.api import Engine
    from engine.characters import attach_lora, create_character
    from engine.identity.registry import get_analyzer

    eng = Engine(EngineSettings(home=tmp_path / "home", weights_dir=tiny_settings.weights_dir))
    data = _wan_lora(tiny_store, "tiny-wan21-t2v-14b", tmp_path)
    ch = create_character("ava", [faces_dir / "obama.jpg"], None, get_analyzer())
    info = {k: v for k, v in _info(data, base="tiny-wan21-t2v-14b", target="wan-transformer").items() if k != "sha256"}
    with eng.library() as lib:
        lib.add(attach_lora(ch, data, "tiny-wan21-t2v-14b", info=info))
    out = eng.video(STANDIN_21, "walks", out=tmp_path / "v.mp4", character="ava", seconds=0.25, character_lora=0.7,
                    score=False)  # fmt: skip
    rec = out.metadata["character_lora"]
    assert rec["scale"] == 0.7 and rec["sha256"] == eng.character("ava").lora.sha256 and rec["version"] == 2
    assert out.metadata["prompt"].startswith("ohwx, ")
    assert not hasattr(eng.pipeline(STANDIN_21).pipe.transformer, "peft_config")
    with pytest.raises(ConfigError) as e:
        eng.video("tiny-video-wan22-t2v-a14b-standin", "walks", out=tmp_path / "w.mp4", character="ava",
                  character_lora=1.0)  # fmt: skip
    assert "tiny-wan21-t2v-14b" in str(e.value) and "tiny-wan22-t2v-a14b" in str(e.value)
