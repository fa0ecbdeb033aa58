"""Step-distilled speed LoRAs (lightx2v for Wan 2.1, Wan2.2-Lightning per expert) through the real load + render path:
tiny LoRAs in the releases' key layouts, loaded by `load_pipeline` with diffusers' own Wan converter.

Latents (`output_type="latent"`) are compared, not pixels: the tiny random VAE squashes differences.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from engine._core.errors import ConfigError

T21 = "tiny-video-wan21-t2v-14b-standin-lightx2v"
I2V = "tiny-video-wan21-i2v-480p-lightx2v"
T22 = "tiny-video-wan22-t2v-a14b-standin-lightning"
SPEED = (T21, I2V, T22)
REAL = {
    T21: "video-wan21-t2v-14b-standin-lightx2v",
    I2V: "video-wan21-i2v-480p-lightx2v",
    T22: "video-wan22-t2v-a14b-standin-lightning",
}
DISTILLED_TIMESTEPS = [999, 937, 833, 625]


@pytest.fixture(scope="module")
def start_image():
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))


def _preset(name, tiny_settings, **changes):
    """The preset `name`, with `changes` applied to its YAML data (`components` merged; None removes a key)."""
    from engine.presets import load_preset, parse_preset

    data = load_preset(name, tiny_settings.presets_dir).model_dump(exclude_unset=True)
    comps = {**data["components"], **changes.pop("components", {})}
    data["components"] = {k: v for k, v in comps.items() if v is not None}
    data.update(changes)
    return parse_preset({k: v for k, v in data.items() if v is not None}, f"<{name} variant>")


def _load(preset, tiny_store, cpu_plan):
    from engine.pipelines.loading import load_pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_pipeline(preset, tiny_store, cpu_plan)


def _without_lora(name, tiny_settings):
    return _preset(name, tiny_settings, components={"speed_lora": None, "speed_lora_2": None}, speed_lora_scale=None)


def _clip(loaded, start_image, **kw):
    from engine.pipelines.render import render_clip

    image = start_image if loaded.preset.pipeline == "wan-i2v" else None
    return render_clip(loaded, "a man walks", image, seed=3, output_type="latent", **kw)


def _file_tensors(tiny_store, cid):
    from safetensors.torch import load_file

    entry = tiny_store.manifest.get(cid)
    return load_file(str(tiny_store.require(cid) / entry.weight_name))


def test_tiny_twins_mirror_the_real_speed_presets(tiny_settings):
    """Each tiny speed preset has its real preset, the same slots, sampler and schedule (only size and frames differ),
    and each tiny LoRA is the generated twin of the real LoRA its real preset names, with the same file name."""
    from engine.models.manifest import load_manifest
    from engine.presets import load_preset

    manifest = load_manifest(tiny_settings.manifest_path)
    for tiny_name, real_name in REAL.items():
        tiny, real = (
            load_preset(tiny_name, tiny_settings.presets_dir),
            load_preset(real_name, tiny_settings.presets_dir),
        )
        assert set(tiny.components.ids()) == set(real.components.ids())
        same = ("pipeline", "scheduler", "steps", "guidance", "flow_shift", "boundary_ratio", "guidance_2")
        assert all(getattr(tiny, k) == getattr(real, k) for k in same), tiny_name
        assert (real.scheduler, real.steps, real.guidance, real.flow_shift) == ("unipc", 4, 1.0, 5.0)
        assert real.speed_lora_scale == tiny.speed_lora_scale == 1.0
        for slot in ("speed_lora", "speed_lora_2"):
            cid = getattr(tiny.components, slot)
            if cid is None:
                continue
            twin, real_entry = manifest.get(cid), manifest.get(getattr(real.components, slot))
            assert twin.source.twin_of == real_entry.id and twin.family == real_entry.family == "speed-lora"
            assert twin.weight_name == real_entry.weight_name and twin.files == real_entry.files


def test_tiny_loras_are_in_the_released_key_layouts(tiny_store):
    """lightx2v (Kijai): `diffusion_model.` original-Wan names, bias (`.diff_b`) and norm (`.diff`) deltas, no alpha,
    bf16, rank 128 (the I2V file adds `k_img`/`v_img`); Lightning: the same names with one `.alpha` per layer,
    float32, rank 64."""
    t2v = _file_tensors(tiny_store, "tiny-lightx2v-wan21-t2v-14b")
    i2v = _file_tensors(tiny_store, "tiny-lightx2v-wan21-i2v-14b-480p")
    high = _file_tensors(tiny_store, "tiny-lightning-wan22-t2v-a14b-high")
    for sd in (t2v, i2v, high):
        assert all(k.startswith("diffusion_model.blocks.") for k in sd)
    assert t2v["diffusion_model.blocks.0.self_attn.q.lora_down.weight"].shape == (128, 24)
    assert t2v["diffusion_model.blocks.1.ffn.0.lora_up.weight"].shape == (32, 128)
    assert (
        "diffusion_model.blocks.0.cross_attn.o.diff_b" in t2v
        and "diffusion_model.blocks.0.self_attn.norm_q.diff" in t2v
    )
    assert not any(k.endswith(".alpha") or "k_img" in k for k in t2v) and {v.dtype for v in t2v.values()} == {
        torch.bfloat16
    }
    assert "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight" in i2v
    assert high["diffusion_model.blocks.0.self_attn.q.lora_down.weight"].shape == (64, 24)
    assert float(high["diffusion_model.blocks.0.ffn.2.alpha"]) == 32.0
    assert {v.dtype for v in high.values()} == {torch.float32}
    assert not torch.equal(
        high["diffusion_model.blocks.0.self_attn.q.lora_up.weight"],
        _file_tensors(tiny_store, "tiny-lightning-wan22-t2v-a14b-low")[
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight"
        ],
    )


@pytest.mark.parametrize("name", SPEED)
def test_each_lora_loads_through_diffusers_converter_and_changes_the_latents(name, load_tiny, tiny_settings, tiny_store,
                                                                             cpu_plan, start_image):  # fmt: skip
    """The LoRA is a peft adapter on the transformer whose weights are the released tensors as diffusers' converter
    maps them (down -> lora_A, up -> lora_B, diff_b -> lora_B.bias, alpha / rank folded in), and it moves the
    latents away from the same preset without it."""
    loaded = load_tiny(name)
    transformer = loaded.pipe.transformer
    assert loaded.extras["speed_lora"]["transformer"] == {
        "id": loaded.preset.components.speed_lora,
        "adapter": "speed_lora",
        "scale": 1.0,
    }
    layer = transformer.blocks[0].attn1.to_q
    assert "speed_lora" in layer.lora_A
    raw = _file_tensors(tiny_store, loaded.preset.components.speed_lora)
    down = raw["diffusion_model.blocks.0.self_attn.q.lora_down.weight"].float()
    up = raw["diffusion_model.blocks.0.self_attn.q.lora_up.weight"].float()
    alpha = raw.get("diffusion_model.blocks.0.self_attn.q.alpha")
    scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
    delta = layer.lora_B["speed_lora"].weight @ layer.lora_A["speed_lora"].weight * layer.scaling["speed_lora"]
    torch.testing.assert_close(delta, up @ down * scale, rtol=1e-5, atol=1e-6)
    if "diffusion_model.blocks.0.self_attn.q.diff_b" in raw:
        assert torch.equal(layer.lora_B["speed_lora"].bias, raw["diffusion_model.blocks.0.self_attn.q.diff_b"].float())
    if name == I2V:  # the image cross-attention layers get the LoRA too
        assert "speed_lora" in transformer.blocks[0].attn2.add_k_proj.lora_A

    plain = _load(_without_lora(name, tiny_settings), tiny_store, cpu_plan)
    assert getattr(plain.pipe.transformer, "peft_config", None) is None
    with_lora, without = _clip(loaded, start_image), _clip(plain, start_image)
    assert with_lora.latents.shape == without.latents.shape
    assert (with_lora.latents - without.latents).abs().max().item() > 1e-2


@pytest.mark.parametrize("name", [T21, T22])
def test_scale_zero_renders_exactly_the_base_model(name, tiny_settings, tiny_store, cpu_plan, start_image):
    """speed_lora_scale 0 equals the preset without the LoRA bit for bit (both experts on Wan 2.2); 0.5 differs from
    both 0 and 1. The metadata records the scale."""
    zero = _load(_preset(name, tiny_settings, speed_lora_scale=0.0), tiny_store, cpu_plan)
    half = _load(_preset(name, tiny_settings, speed_lora_scale=0.5), tiny_store, cpu_plan)
    full = _load(_preset(name, tiny_settings), tiny_store, cpu_plan)
    plain = _load(_without_lora(name, tiny_settings), tiny_store, cpu_plan)
    z, h, f, p = (_clip(x, start_image) for x in (zero, half, full, plain))
    assert torch.equal(z.latents, p.latents)
    assert (h.latents - z.latents).abs().max().item() > 1e-3 and (h.latents - f.latents).abs().max().item() > 1e-3
    assert z.metadata["models"]["speed_lora"]["scale"] == 0.0 and h.metadata["models"]["speed_lora"]["scale"] == 0.5


@pytest.mark.parametrize("name", SPEED)
def test_unipc_at_shift_5_gives_the_distilled_timesteps(name, load_tiny, start_image):
    """The speed presets' sampler is UniPC on flow sigmas at shift 5: 4 steps run at t = 999, 937, 833, 625 (the
    distillation's own), not FlowMatchEuler's 1000, 910, 717, 24."""
    import copy

    loaded = load_tiny(name)
    sched = loaded.pipe.scheduler
    assert type(sched).__name__ == "UniPCMultistepScheduler"
    assert (sched.config.prediction_type, sched.config.use_flow_sigmas, sched.config.flow_shift) == (
        "flow_prediction",
        True,
        5.0,
    )
    probe = copy.deepcopy(sched)
    probe.set_timesteps(4)
    assert probe.timesteps.tolist() == DISTILLED_TIMESTEPS
    seen = []

    def record(pipe, step, t, kw):
        seen.append(int(t))
        return kw

    clip = _clip(loaded, start_image, callback_on_step_end=record)
    assert seen == DISTILLED_TIMESTEPS
    assert clip.metadata["parameters"]["steps"] == 4 and clip.metadata["parameters"]["guidance"] == 1.0
    assert clip.metadata["parameters"]["flow_shift"] == 5.0


def test_scheduler_fix_applies_to_a_base_that_ships_flow_match_euler(tiny_settings, tiny_store, cpu_plan):
    """`scheduler: unipc` makes UniPC on flow sigmas even when the folder ships another sampler, so a speed preset
    never runs UniPC on epsilon predictions."""
    import diffusers

    from engine.pipelines.loading import _configure_scheduler

    loaded = _load(_preset(T21, tiny_settings), tiny_store, cpu_plan)
    pipe = loaded.pipe
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    _configure_scheduler(pipe, loaded.preset)
    pipe.scheduler.set_timesteps(4)
    assert pipe.scheduler.timesteps.tolist() == DISTILLED_TIMESTEPS


def test_wan22_high_lora_on_transformer_low_lora_on_transformer_2(load_tiny, tiny_store, start_image):
    """Lightning: the high-noise file is the adapter on `transformer` only, the low-noise file on `transformer_2`
    only (checked against each file's own tensors), and at boundary 0.875 the 4 steps run 2 + 2 on the experts."""
    loaded = load_tiny(T22)
    pipe = loaded.pipe
    assert set(pipe.transformer.peft_config) == {"speed_lora"}
    assert set(pipe.transformer_2.peft_config) == {"speed_lora_2"}
    for transformer, adapter, cid in (
        (pipe.transformer, "speed_lora", "tiny-lightning-wan22-t2v-a14b-high"),
        (pipe.transformer_2, "speed_lora_2", "tiny-lightning-wan22-t2v-a14b-low"),
    ):
        raw = _file_tensors(tiny_store, cid)
        layer = transformer.blocks[1].ffn.net[2]
        down = raw["diffusion_model.blocks.1.ffn.2.lora_down.weight"]
        up = raw["diffusion_model.blocks.1.ffn.2.lora_up.weight"]
        delta = layer.lora_B[adapter].weight @ layer.lora_A[adapter].weight
        torch.testing.assert_close(delta, up @ down * 0.5, rtol=1e-5, atol=1e-6)
    assert loaded.extras["speed_lora"]["transformer_2"]["id"] == "tiny-lightning-wan22-t2v-a14b-low"
    ran = []
    hooks = [
        t.register_forward_pre_hook(lambda m, a, name=name: ran.append(name))
        for name, t in (("transformer", pipe.transformer), ("transformer_2", pipe.transformer_2))
    ]
    try:
        _clip(loaded, start_image)
    finally:
        for h in hooks:
            h.remove()
    assert ran == ["transformer", "transformer", "transformer_2", "transformer_2"]  # guidance 1: no uncond calls


@pytest.mark.parametrize("name", [T21, T22])
def test_the_lora_acts_on_stand_ins_reference_stream(name, faces_dir, tiny_settings, tiny_store, cpu_plan,
                                                     monkeypatch):  # fmt: skip
    """Stand-In's reference pass is a forward of the same (peft-wrapped) transformer: its K/V cache with the LoRA
    differs from the cache without it, the same cache with the adapters switched off equals the LoRA-less one
    exactly, and at scale 0 the caches are identical. Wan 2.2: per expert, each with its own LoRA."""
    from PIL import Image

    import engine.adapters.standin as standin
    from engine.identity.images import load_image
    from engine.pipelines.video_wan.reference import render_reference_clip

    im = Image.fromarray(load_image(faces_dir / "obama.jpg"))  # halved: detection cost grows with pixels
    photo = np.asarray(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS))
    caches: list[dict] = []
    real_prepare = standin.StandIn.prepare

    def keep(self, references, weights=None, grid=(1, 1, 1)):
        real_prepare(self, references, weights, grid)
        kv = {i: (k.clone(), v.clone()) for i, (k, v) in self.state.kv.items()}
        caches.append({"kv": kv, "transformer": self.transformer, "lora": self.weights.lora, "refs": references,
                       "grid": grid})  # fmt: skip

    monkeypatch.setattr(standin.StandIn, "prepare", keep)

    def run(preset):
        loaded = _load(preset, tiny_store, cpu_plan)
        start = len(caches)
        clip = render_reference_clip(loaded, "a man", [(photo, 1.0)], seed=1, output_type="latent")
        return loaded, clip, caches[start:]

    lora_loaded, lora_clip, with_lora = run(_preset(name, tiny_settings))
    _, plain_clip, without = run(_without_lora(name, tiny_settings))
    _, _, at_zero = run(_preset(name, tiny_settings, speed_lora_scale=0.0))
    experts = 2 if name == T22 else 1
    assert len(with_lora) == len(without) == len(at_zero) == experts
    for a, b, z in zip(with_lora, without, at_zero):
        assert set(a["kv"]) == set(b["kv"]) == {0, 1}
        assert all(not torch.equal(a["kv"][i][0], b["kv"][i][0]) for i in a["kv"])  # keys of every block move
        assert all(
            torch.equal(z["kv"][i][0], b["kv"][i][0]) and torch.equal(z["kv"][i][1], b["kv"][i][1]) for i in b["kv"]
        )
    from engine.processors.attention_wan import compute_reference_kv

    for a, b in zip(with_lora, without):
        t = a["transformer"]
        t.disable_adapters()
        try:
            off = compute_reference_kv(t, a["refs"], a["grid"], a["lora"])
        finally:
            t.enable_adapters()
        assert all(torch.equal(off[i][0], b["kv"][i][0]) and torch.equal(off[i][1], b["kv"][i][1]) for i in off)
    assert (lora_clip.latents - plain_clip.latents).abs().max().item() > 1e-2
    models = lora_clip.metadata["models"]
    assert models["reference"]["id"] == lora_loaded.preset.components.reference and "speed_lora" in models


@pytest.mark.parametrize("name", SPEED)
def test_the_lora_is_recorded_in_the_metadata_with_its_hashes(name, load_tiny, tiny_store, start_image):
    """`models.speed_lora` (and `speed_lora_2`) hold the component record (id, whole-component sha256, per-file
    sha256 of the locked file that was loaded) plus the adapter, the expert and the scale."""
    loaded = load_tiny(name)
    meta = _clip(loaded, start_image).metadata
    slots = ("speed_lora", "speed_lora_2") if name == T22 else ("speed_lora",)
    assert {k for k in meta["models"] if k.startswith("speed")} == set(slots)
    for slot, expert in zip(slots, ("transformer", "transformer_2")):
        rec = meta["models"][slot]
        cid = getattr(loaded.preset.components, slot)
        entry = tiny_store.manifest.get(cid)
        assert rec["id"] == cid and rec["sha256"] == tiny_store.component_digest(cid)
        assert rec["sha256"].startswith("sha256:")
        assert rec["files"] == tiny_store.component_hashes(cid) and entry.weight_name in rec["files"]
        assert (rec["adapter"], rec["expert"], rec["scale"]) == (slot, expert, 1.0)


def test_a_lora_for_another_model_is_one_line_config_error(tiny_settings, tiny_store, cpu_plan):
    """diffusers would load an I2V LoRA into a T2V transformer and only warn about the image layers it drops; the
    engine refuses it in one line naming the LoRA, the missing layer and the fix, before any adapter is added."""
    preset = _preset(T21, tiny_settings, components={"speed_lora": "tiny-lightx2v-wan21-i2v-14b-480p"})
    with pytest.raises(ConfigError) as e:
        _load(preset, tiny_store, cpu_plan)
    msg = str(e.value)
    assert "\n" not in msg
    assert "tiny-lightx2v-wan21-i2v-14b-480p" in msg and "add_k_proj" in msg and "made for another Wan model" in msg


@pytest.mark.parametrize(
    ("key", "shape", "expected"),
    [
        ("diffusion_model.blocks.0.self_attn.q.lora_down.weight", (8, 48), "does not fit 'blocks.0.attn1.to_q'"),
        ("diffusion_model.blocks.5.self_attn.q.lora_down.weight", (8, 24), "'blocks.5.attn1.to_q', which"),
    ],
)
def test_a_lora_for_another_size_is_refused(key, shape, expected, load_tiny):
    """A LoRA from a wider model (5120 vs 1536) or with more blocks, converted by diffusers' own converter, does not
    fit the tiny transformer: one line."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers

    from engine.pipelines.loading import check_lora_fits

    rank, width = shape
    sd = {key: torch.zeros(rank, width), key.replace("lora_down", "lora_up"): torch.zeros(width, rank)}
    converted = _convert_non_diffusers_wan_lora_to_diffusers(sd)
    with pytest.raises(ConfigError, match=expected) as e:
        check_lora_fits(converted, load_tiny(T21).pipe.transformer, "wide", "the transformer of 'tiny-wan21-t2v-14b'")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="does not map") as e:
        check_lora_fits({"lora_unet_blocks_0.weight": torch.zeros(1)}, load_tiny(T21).pipe.transformer, "x", "it")
    with pytest.raises(ConfigError, match="holds no LoRA weights"):
        check_lora_fits({}, load_tiny(T21).pipe.transformer, "x", "it")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"components": {"speed_lora_2": None}}, "two experts .boundary_ratio. need components.speed_lora_2"),
        ({"components": {"speed_lora": None}}, "set components.speed_lora too"),
    ],
)
def test_two_experts_need_both_loras_and_the_second_needs_the_first(changes, expected, tiny_settings):
    with pytest.raises(ConfigError, match=expected) as e:
        _preset(T22, tiny_settings, **changes)
    assert "\n" not in str(e.value)


def test_schema_refusals_are_one_line(tiny_settings):
    """A second LoRA on a one-expert model, a scale without a LoRA, a speed LoRA on a still preset, and a speed slot
    naming a non-LoRA component are each refused in one line."""
    from engine.models.manifest import load_manifest
    from engine.presets import check_components, load_preset, parse_preset

    with pytest.raises(ConfigError, match="one needs none"):
        _preset(T21, tiny_settings, components={"speed_lora_2": "tiny-lightning-wan22-t2v-a14b-low"})
    with pytest.raises(ConfigError, match="speed_lora_scale does nothing"):
        _preset("tiny-video-wan21-i2v-480p", tiny_settings, speed_lora_scale=0.5)
    still = load_preset("tiny-stills-sdxl", tiny_settings.presets_dir).model_dump(exclude_unset=True)
    still["components"]["speed_lora"] = "tiny-lightx2v-wan21-t2v-14b"
    with pytest.raises(ConfigError, match="speed LoRAs are for Wan video presets"):
        parse_preset(still, "<still>")
    bad = _preset(T21, tiny_settings, components={"speed_lora": "tiny-standin-wan21-t2v-14b"})
    with pytest.raises(ConfigError, match="'tiny-standin-wan21-t2v-14b' is not a speed LoRA") as e:
        check_components(bad, load_manifest(tiny_settings.manifest_path))
    assert "\n" not in str(e.value)
