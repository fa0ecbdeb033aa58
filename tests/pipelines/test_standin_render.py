"""Stand-In clips through the real load + render path: tiny presets on diffusers' own `WanPipeline` /
`WanVACEPipeline`, `render_reference_clip`, and what the metadata says.

Latents (`output_type="latent"`) are compared, not pixels: the tiny random VAE squashes differences.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings

import numpy as np
import pytest
import torch

from engine._core.errors import EngineWarning, InputError

T21 = "tiny-video-wan21-t2v-14b-standin"
T22 = "tiny-video-wan22-t2v-a14b-standin"
VACE = "tiny-video-wan21-vace-14b-standin"


@pytest.fixture(scope="module")
def photos(faces_dir):
    """Two people, downscaled (detection cost grows with pixels; the crop is 512 px either way)."""
    from PIL import Image

    from engine.identity.images import load_image

    def small(name):
        im = Image.fromarray(load_image(faces_dir / name))
        return np.asarray(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS))

    return {"obama": small("obama.jpg"), "obama2": small("obama2.jpg"), "biden": small("biden.jpg")}


def _clip(loaded, refs, **kw):
    from engine.pipelines.video_wan.reference import render_reference_clip

    return render_reference_clip(loaded, "a man", refs, seed=kw.pop("seed", 1), output_type="latent", **kw)


def _stock(loaded, **kw):
    from engine.pipelines.render import render_clip

    return render_clip(loaded, "a man", seed=1, output_type="latent", **kw)


@pytest.mark.parametrize("preset", [T21, T22, VACE])
def test_tiny_presets_render_with_the_reference_and_record_it(load_tiny, photos, preset):
    """Every trained tiny preset renders through the real pipeline; the metadata records the checkpoint(s) with
    their hashes (and the pickle each was converted from), strength, blocks, window, trained, and the sha256 of
    each reference photo and of its prepared crop."""
    loaded = load_tiny(preset)
    procs = loaded.pipe.transformer.attn_processors
    clip = _clip(loaded, [(photos["obama"], 1.0), (photos["obama2"], 0.5)])
    assert loaded.pipe.transformer.attn_processors == procs  # detached again
    stock = _stock(loaded)
    assert "reference" not in stock.metadata["models"]  # plain render_clip: the checkpoint was not applied
    assert clip.latents.shape == stock.latents.shape
    assert (clip.latents - stock.latents).abs().max().item() > 1e-3
    meta = clip.metadata
    ident = meta["identity"]
    assert ident["method"] == "stand-in" and ident["trained"] is True and ident["experimental"] is False
    assert ident["strength"] == 1.0 and ident["blocks"] == "all" and ident["window"] == [0.0, 1.0]
    experts = ["transformer", "transformer_2"] if preset == T22 else ["transformer"]
    assert sorted(ident["checkpoints"]) == experts
    for expert, slot in zip(experts, ("reference", "reference_2")):
        rec = ident["checkpoints"][expert]
        assert rec["id"] == loaded.preset.components.model_dump()[slot]
        assert rec["sha256"] == meta["models"][slot]["sha256"] and rec["sha256"].startswith("sha256:")
        assert len(rec["converted_from"]) == 1 and next(iter(rec["converted_from"])).endswith(".ckpt")
    refs = ident["references"]
    assert [r["weight"] for r in refs] == [1.0, 0.5]
    assert refs[0]["pixels_sha256"] == hashlib.sha256(np.ascontiguousarray(photos["obama"]).tobytes()).hexdigest()
    assert refs[0]["face_box"] is not None and len(refs[0]["prepared_sha256"]) == 64
    assert ident["reference_size"] == 512


def test_strength_zero_renders_the_stock_pipeline_exactly(load_tiny, photos):
    """Strength 0 is the stock model bit for bit, on both experts of Wan 2.2 too."""
    for preset in (T21, T22):
        loaded = load_tiny(preset)
        clip = _clip(loaded, [(photos["obama"], 1.0)], strength=0.0)
        assert torch.equal(clip.latents, _stock(loaded).latents)
        assert clip.metadata["identity"]["strength"] == 0.0


def test_another_reference_changes_the_latents_and_the_same_one_reproduces_them(load_tiny, photos):
    """Same photo, same seed: the same latents exactly; another person's photo: other latents."""
    loaded = load_tiny(T21)
    a = _clip(loaded, [(photos["obama"], 1.0)])
    again = _clip(loaded, [(photos["obama"], 1.0)])
    other = _clip(loaded, [(photos["biden"], 1.0)])
    assert torch.equal(a.latents, again.latents)
    # the tiny random VAE maps different photos to similar latents: the change is small, but far from float noise
    assert (a.latents - other.latents).abs().max().item() > 1e-5
    assert (
        a.metadata["identity"]["references"][0]["pixels_sha256"]
        != (other.metadata["identity"]["references"][0]["pixels_sha256"])
    )


def test_wan22_each_expert_uses_its_own_checkpoint_and_cache(load_tiny, photos, monkeypatch):
    """Wan 2.2: `transformer` (high noise, the first step here) gets the high checkpoint and its own cache,
    `transformer_2` (low noise) the low one; each cache equals the reference pass of that expert with that
    checkpoint, recomputed here, and the two differ. Handing the low expert the high checkpoint changes the clip."""
    import engine.adapters.standin as standin
    from engine.adapters.standin import encode_references
    from engine.pipelines.video_wan.reference import prepare_references
    from engine.processors.attention_wan import compute_reference_kv

    loaded = load_tiny(T22)
    pipe = loaded.pipe
    handles, ran = [], []
    real_attach = standin.attach

    def spy(transformer, weights, **kw):
        h = real_attach(transformer, weights, **kw)
        handles.append(h)
        return h

    def kv_snapshot(pipeline, step, timestep, callback_kwargs):
        return callback_kwargs

    monkeypatch.setattr(standin, "attach", spy)
    hooks = [
        t.register_forward_pre_hook(lambda m, a, name=name: ran.append(name))
        for name, t in (("transformer", pipe.transformer), ("transformer_2", pipe.transformer_2))
    ]
    caches = []
    real_prepare = standin.StandIn.prepare

    def keep(self, *a, **kw):
        real_prepare(self, *a, **kw)
        caches.append({i: (k.clone(), v.clone()) for i, (k, v) in self.state.kv.items()})

    monkeypatch.setattr(standin.StandIn, "prepare", keep)
    try:
        clip = _clip(loaded, [(photos["obama"], 1.0)], callback_on_step_end=kv_snapshot)
    finally:
        for h in hooks:
            h.remove()
    assert [h.transformer for h in handles] == [pipe.transformer, pipe.transformer_2]
    assert [h.weights.name for h in handles] == ["tiny-standin-wan22-t2v-a14b-high", "tiny-standin-wan22-t2v-a14b-low"]
    # one reference pass per expert, then 2 steps x (cond, uncond): step 0 on the high expert, step 1 on the low
    assert ran == ["transformer", "transformer_2"] + ["transformer"] * 2 + ["transformer_2"] * 2

    refs = prepare_references([(photos["obama"], 1.0)])
    latents = encode_references(pipe.vae, [refs[0].image])
    grid = tuple(clip.metadata["identity"]["video_grid"])
    for cache, t, w in zip(caches, (pipe.transformer, pipe.transformer_2), (h.weights for h in handles)):
        expected = compute_reference_kv(t, latents, grid, w.lora)
        assert all(
            torch.equal(cache[i][0], expected[i][0]) and torch.equal(cache[i][1], expected[i][1]) for i in cache
        )
    assert not torch.equal(caches[0][0][0], caches[1][0][0])

    monkeypatch.setattr(standin, "attach", real_attach)
    high = loaded.extras["reference"]["transformer"]
    swapped = dataclasses.replace(
        loaded, extras={**loaded.extras, "reference": {"transformer": high, "transformer_2": high}}
    )
    assert (_clip(swapped, [(photos["obama"], 1.0)]).latents - clip.latents).abs().max().item() > 1e-4


def test_blocks_and_window_reach_the_render(load_tiny, photos):
    """A later step window or fewer blocks give other clips than the full reference, and are recorded."""
    loaded = load_tiny(T21)
    full = _clip(loaded, [(photos["obama"], 1.0)])
    late = _clip(loaded, [(photos["obama"], 1.0)], start=0.5)
    one_block = _clip(loaded, [(photos["obama"], 1.0)], blocks=[0])
    stock = _stock(loaded)
    for clip in (late, one_block):
        assert (clip.latents - full.latents).abs().max().item() > 1e-4
        assert (clip.latents - stock.latents).abs().max().item() > 1e-4
    assert late.metadata["identity"]["window"] == [0.5, 1.0]
    assert one_block.metadata["identity"]["blocks"] == [0]


@pytest.mark.parametrize("preset", ["tiny-video-wan21-i2v-480p", "tiny-video-wan22-ti2v-5b"])
def test_models_without_trained_weights_run_only_as_experimental_and_say_so(load_tiny, photos, face_image, preset):
    """I2V and TI2V-5B have no Stand-In weights: refused unless `experimental=True`; then the reference attention
    runs untrained (base projections), an `EngineWarning` says so, and so does the metadata."""
    loaded = load_tiny(preset)
    with pytest.raises(InputError, match="no trained Stand-In weights.*experimental=True") as e:
        _clip(loaded, [(photos["obama"], 1.0)], image=face_image)
    assert "\n" not in str(e.value)
    with pytest.warns(EngineWarning, match="UNTRAINED"):
        clip = _clip(loaded, [(photos["obama"], 1.0)], image=face_image, experimental=True)
    ident = clip.metadata["identity"]
    assert ident["trained"] is False and ident["experimental"] is True and "untrained" in ident["note"]
    assert all(v is None for v in ident["checkpoints"].values())
    stock = _stock(loaded, image=face_image)
    assert (clip.latents - stock.latents).abs().max().item() > 1e-4


def test_the_pipeline_is_stock_again_even_when_a_render_fails(load_tiny, photos):
    """Detach runs in `finally`: a render that raises mid-way (here a cancelling callback) leaves the stock
    processors in place."""
    loaded = load_tiny(T21)
    procs = loaded.pipe.transformer.attn_processors

    def boom(pipeline, step, timestep, callback_kwargs):
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        _clip(loaded, [(photos["obama"], 1.0)], callback_on_step_end=boom)
    assert loaded.pipe.transformer.attn_processors == procs


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"strength": 1.5}, "reference strength"),
        ({"start": 0.8, "end": 0.2}, "window start"),
        ({"blocks": [9]}, "block indices"),
        ({"refs": "five"}, "1 to 4 reference photos"),
        ({"refs": "weight0"}, r"weight must be a number in \(0, 1\]"),
        ({"refs": "gray"}, "uint8 RGB array"),
    ],
)
def test_bad_reference_inputs_are_one_line_errors(load_tiny, photos, kwargs, expected):
    """Out-of-range controls and unusable photos fail before anything is attached, in one line."""
    loaded = load_tiny(T21)
    refs = [(photos["obama"], 1.0)]
    choice = kwargs.pop("refs", None)
    if choice == "five":
        refs = refs * 5
    elif choice == "weight0":
        refs = [(photos["obama"], 0.0)]
    elif choice == "gray":
        refs = [(photos["obama"][..., 0], 1.0)]
    procs = loaded.pipe.transformer.attn_processors
    with pytest.raises(InputError, match=expected) as e:
        _clip(loaded, refs, **kwargs)
    assert "\n" not in str(e.value)
    assert loaded.pipe.transformer.attn_processors == procs


def test_wan22_loads_its_boundary_and_passes_guidance_2(load_tiny):
    """The preset's boundary_ratio is the pipeline's; guidance_2 reaches the low-noise expert; a one-expert preset
    refuses it."""
    loaded = load_tiny(T22)
    assert loaded.pipe.config.boundary_ratio == 0.875 and loaded.pipe.transformer_2 is not None
    a = _stock(loaded)
    b = _stock(loaded, guidance_2=1.0)
    assert a.metadata["parameters"]["guidance_2"] == 5.0 and b.metadata["parameters"]["guidance_2"] == 1.0
    assert a.metadata["parameters"]["boundary_ratio"] == 0.875
    assert (a.latents - b.latents).abs().max().item() > 1e-4
    with pytest.raises(InputError, match="guidance_2 applies to two-expert presets"):
        _stock(load_tiny(T21), guidance_2=2.0)


def test_the_presets_boundary_ratio_overrides_the_folders_and_needs_two_experts(
    tiny_settings, tiny_store, cpu_plan, tmp_path
):
    """`boundary_ratio` in a preset is what the pipeline switches at; on a one-expert model it is refused."""
    import yaml

    from engine._core.errors import ConfigError
    from engine.pipelines.loading import load_pipeline
    from engine.presets import load_preset

    def custom(base, **changes):
        data = yaml.safe_load((tiny_settings.presets_dir / f"{base}.yaml").read_text())
        data.update(changes)
        path = tmp_path / f"{base}-custom.yaml"
        path.write_text(yaml.safe_dump(data))
        return load_preset(path, tiny_settings.presets_dir)

    loaded = load_pipeline(custom(T22, boundary_ratio=0.5), tiny_store, cpu_plan)
    assert loaded.pipe.config.boundary_ratio == 0.5
    with pytest.raises(ConfigError, match="no transformer_2") as e:
        load_pipeline(custom("tiny-video-wan21-t2v-1.3b", boundary_ratio=0.875), tiny_store, cpu_plan)
    assert "\n" not in str(e.value)


def test_references_are_cropped_as_stand_in_crops(photos):
    """Largest face, a square of 1.5x the (grown) box side around its centre, white padding where the square
    leaves the photo, 512 x 512; no face: the whole photo padded to a square."""
    from engine.adapters.standin import prepare_reference_image
    from engine.pipelines.video_wan.reference import prepare_references

    (ref,) = prepare_references([(photos["obama"], 1.0)])
    assert ref.image.shape == (512, 512, 3) and ref.image.dtype == np.uint8
    x0, y0, x1, y1 = ref.record["crop_box"]
    fx0, fy0, fx1, fy1 = ref.record["face_box"]
    assert y0 < fy0 and y1 == fy1 and x0 < fx0 and x1 > fx1  # grown upwards (forehead) and a little sideways
    blank = np.full((300, 200, 3), 90, np.uint8)
    out = prepare_reference_image(blank, None)
    assert out.shape == (512, 512, 3) and (out[:, :10] == 255).all() and (out[:, 256] == 90).all()
    edge = prepare_reference_image(blank, (150, 100, 199, 160))  # the square runs off the right edge: padded white
    assert (edge[:, -5:] == 255).all()
    mask = np.zeros((512, 512), bool)
    mask[:100] = True
    assert (prepare_reference_image(blank, None, background_mask=mask)[:100] == 255).all()


def test_render_reference_clip_keeps_the_warning_quiet_for_trained_presets(load_tiny, photos):
    """The untrained warning is for experimental runs only."""
    loaded = load_tiny(T21)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EngineWarning)
        _clip(loaded, [(photos["obama"], 1.0)], steps=1)
