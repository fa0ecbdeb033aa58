"""Identity-conditioned stills (FaceID-Plus-v2, InstantID) on the tiny twins, through diffusers' own pipelines.

The methods, stated plainly (what the tests below hold our code to):
- FaceID-Plus-v2: the UNet's IP-Adapter attention gets the identity tokens of the buffalo_l ArcFace *normed*
  embedding (zeros for the unconditional half) and of CLIP ViT-H's penultimate hidden states of the 224 px aligned
  face crop (an all-zero image's for the unconditional half), with the v2 shortcut on at the structure scale.
- InstantID: the IP-Adapter gets the antelopev2 ArcFace *raw* embedding; IdentityNet (a ControlNet) gets the same
  embedding's 16 projected face tokens as its cross-attention context (not the text) and an image of the 5 face
  keypoints drawn on black.
- Several characters: one adapter, N embeddings, N region masks; outside its mask an identity adds nothing.
- Identity strength 0: every identity contribution is zero, so the render equals plain SDXL's exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine._core.errors import InputError
from engine.characters import create_character, reembed

FACEID, INSTANTID = "tiny-stills-faceid-sdxl", "tiny-stills-instantid-sdxl"
ENCODERS = {FACEID: "tiny-arcface-buffalo_l-w600k_r50", INSTANTID: "tiny-arcface-antelopev2-glintr100"}


@pytest.fixture(scope="module")
def people(tiny_settings, faces_dir):
    """Two characters from the real test photos, embedded with dlib and both tiny ArcFace twins."""
    from engine.identity.registry import get_analyzer

    dlib = get_analyzer()
    out = {}
    for name, photos in (("ava", ["obama.jpg", "obama2.jpg"]), ("bob", ["biden.jpg"]), ("cyd", ["obama2.jpg"])):
        ch = create_character(name, [faces_dir / p for p in photos], None, dlib)
        for enc in ENCODERS.values():
            ch = reembed(ch, get_analyzer(enc, settings=tiny_settings))
        out[name] = ch
    return out


@pytest.fixture(scope="module")
def engine(tiny_settings, people, tmp_path_factory):
    from engine._core.settings import EngineSettings
    from engine.api import Engine

    home = tmp_path_factory.mktemp("stills-home")
    settings = EngineSettings(home=home, weights_dir=tiny_settings.weights_dir)
    eng = Engine(settings)
    with eng.library() as lib:
        for ch in people.values():
            lib.add(ch)
    return eng


def _inputs(engine, preset_name, chars):
    from engine.shots.still import _method_info, identity_input

    preset = engine.preset(preset_name)
    info = _method_info(engine, preset)
    return [identity_input(c, info, engine.analyzer()) for c in chars]


def _latents(engine, preset_name, chars, *, seed=1, **kw):
    from engine.pipelines.stills_sdxl.render import render_identity_still

    loaded = engine.pipeline(preset_name)
    return render_identity_still(
        loaded, "a portrait", None, seed, _inputs(engine, preset_name, chars), output_type="latent", **kw
    )


@pytest.mark.parametrize("preset", [FACEID, INSTANTID])
def test_character_changes_the_latents_and_the_same_one_reproduces_them(engine, people, preset):
    a = _latents(engine, preset, [people["ava"]]).images[0]
    again = _latents(engine, preset, [people["ava"]]).images[0]
    other = _latents(engine, preset, [people["bob"]]).images[0]
    assert torch.equal(a, again)
    assert (a - other).abs().mean() > 1e-3


@pytest.mark.parametrize("preset", [FACEID, INSTANTID])
def test_strength_zero_equals_the_plain_pipeline_exactly(engine, people, preset):
    import diffusers

    z = _latents(engine, preset, [people["ava"]], strength=0.0).images[0]
    loaded = engine.pipeline(preset)
    plain = diffusers.StableDiffusionXLPipeline.from_pretrained(
        engine.store.require("tiny-sdxl-base"), local_files_only=True
    )
    plain.scheduler = type(loaded.pipe.scheduler).from_config(loaded.pipe.scheduler.config)
    plain.set_progress_bar_config(disable=True)
    p = plain(
        "a portrait",
        num_inference_steps=loaded.preset.steps,
        guidance_scale=loaded.preset.guidance,
        width=loaded.preset.width,
        height=loaded.preset.height,
        generator=torch.Generator().manual_seed(1),
        output_type="latent",
    ).images[0]
    assert torch.equal(z, p)  # bit for bit
    on = _latents(engine, preset, [people["ava"]], strength=1.0).images[0]
    assert not torch.equal(on, p)  # negative control: the identity does act


def test_faceid_feeds_normed_arcface_and_clip_structure(engine, people):
    from engine.pipelines.stills_sdxl.conditioning import clip_hidden_states, faceid_inputs

    loaded = engine.pipeline(FACEID)
    idents = _inputs(engine, FACEID, [people["ava"]])
    got = faceid_inputs(loaded, idents, cfg=True)
    ids = got.pipeline_kwargs["ip_adapter_image_embeds"][0]
    assert ids.shape == (2, 1, 512)
    assert torch.all(ids[0] == 0) and abs(float(ids[1, 0].norm()) - 1.0) < 1e-5  # zeros | normed embedding
    np.testing.assert_allclose(ids[1, 0].numpy(), people["ava"].embeddings[ENCODERS[FACEID]].vector, atol=1e-6)
    cond, uncond = clip_hidden_states(loaded, [idents[0].face_crop])
    enc = loaded.extras["image_encoder"]
    zero = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        want_uncond = enc(zero, output_hidden_states=True).hidden_states[-2]
    assert torch.allclose(uncond, want_uncond, atol=1e-6)  # the unconditional half is an all-zero image's
    assert torch.allclose(got.clip_embeds[1, 0], cond[0]) and torch.allclose(got.clip_embeds[0, 0], uncond[0])
    assert idents[0].face_crop.shape == (224, 224, 3)


def test_identitynet_receives_the_keypoint_image_and_the_face_tokens(engine, people):
    from engine.pipelines.stills_sdxl.render import render_identity_still

    loaded = engine.pipeline(INSTANTID)
    idents = _inputs(engine, INSTANTID, [people["ava"]])
    seen = []
    hook = loaded.pipe.controlnet.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((args, kwargs)), with_kwargs=True
    )
    try:
        res = render_identity_still(loaded, "a portrait", None, 1, idents, output_type="latent")
    finally:
        hook.remove()
    assert seen
    args, kwargs = seen[0]
    context = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
    # the method, independently: the raw embedding (merged direction x mean raw norm) through the adapter's
    # projection, zeros for the unconditional half
    raw = idents[0].embedding * idents[0].raw_norm
    per_ref = [np.linalg.norm(v) for v in people["ava"].embeddings[ENCODERS[INSTANTID]].per_reference if v]
    assert idents[0].raw_norm == pytest.approx(float(np.mean(per_ref)))  # the references' own raw scale
    emb = torch.tensor(np.stack([np.zeros_like(raw), raw]), dtype=torch.float32)[:, None, :]
    with torch.no_grad():
        want = loaded.pipe.unet.encoder_hid_proj.image_projection_layers[0](emb)
    tokens = loaded.pipe.controlnet.face_tokens if loaded.pipe.controlnet.face_tokens is not None else None
    assert tokens is None  # cleared after the render
    # IdentityNet.forward swaps the context: the pre-hook sees the text, the swap is checked on the module
    assert context.shape[-1] == want.shape[-1]
    swapped = []
    inner = loaded.pipe.controlnet
    orig = type(inner).__mro__[1].forward

    def spy(self, sample, timestep, encoder_hidden_states, *a, **k):
        swapped.append((encoder_hidden_states.detach().clone(), k.get("controlnet_cond", a[0] if a else None)))
        return orig(self, sample, timestep, encoder_hidden_states, *a, **k)

    type(inner).__mro__[1].forward = spy
    try:
        render_identity_still(loaded, "a portrait", None, 1, idents, output_type="latent")
    finally:
        type(inner).__mro__[1].forward = orig
    ctx, cond_image = swapped[0]
    assert torch.allclose(ctx, want, atol=1e-5)  # the face tokens, not the text
    assert not torch.allclose(ctx[:, : context.shape[1]], context[:, : ctx.shape[1]])  # negative control
    kps = res.extras["keypoint_image"]
    img = cond_image[0].permute(1, 2, 0).numpy()  # the pipeline's [0, 1] control image
    np.testing.assert_allclose(img * 255, kps.astype(np.float32), atol=1.5)
    assert kps.max() == 255 and (kps.reshape(-1, 3).max(axis=1) > 0).mean() < 0.5  # points on black


def test_keypoint_drawing_follows_instantids_recipe():
    from engine.identity.keypoints import KPS_COLOURS, draw_kps

    pts = np.array([[40, 40], [88, 40], [64, 64], [44, 90], [84, 90]], dtype=float)
    img = draw_kps((128, 128), [pts])
    for (x, y), colour in zip(pts.astype(int), KPS_COLOURS):
        assert tuple(img[y, x]) == colour  # each point a full-colour disc
    mid = ((pts[0] + pts[2]) / 2).astype(int)  # the left eye -> nose limb, in the eye's colour at 60 %
    assert tuple(img[mid[1], mid[0]]) == tuple(int(c * 0.6) for c in KPS_COLOURS[0])
    assert img[0, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize("preset", [FACEID, INSTANTID])
def test_two_characters_each_region_answers_to_its_own(engine, people, preset):
    """Swap the right-hand character: at the identity adapter nothing changes on the left (exactly), and in the
    final latents the change is concentrated on the right."""
    loaded = engine.pipeline(preset)
    attn = next(m for name, m in loaded.pipe.unet.named_modules() if name.endswith(".attn2"))  # the first one
    grabbed = []
    hook = attn.register_forward_hook(lambda m, i, o: grabbed.append(o.detach().clone()))
    try:
        a = _latents(engine, preset, [people["ava"], people["bob"]], width=128, height=64).images[0]
        b = _latents(engine, preset, [people["ava"], people["cyd"]], width=128, height=64).images[0]
    finally:
        hook.remove()
    n_calls = len(grabbed) // 2
    first_a, first_b = grabbed[0], grabbed[n_calls]  # the first call of each render: identical inputs upstream
    side = int(round(first_a.shape[1] ** 0.5 / 2))  # tokens of a (h x 2h) grid
    h = int(round((first_a.shape[1] / 2) ** 0.5))
    grid = (first_a - first_b).abs().reshape(first_a.shape[0], h, 2 * h, -1)
    assert float(grid[:, :, :h].max()) == 0.0  # left region: exactly untouched by the right-hand identity
    assert float(grid[:, :, h:].max()) > 0.0
    d = (a - b).abs().mean(dim=0)  # (h, w) latent change
    left, right = float(d[:, : d.shape[1] // 2].mean()), float(d[:, d.shape[1] // 2 :].mean())
    assert right > left, (left, right)
    assert side >= 1


def test_a_fifth_character_and_missing_embeddings_are_one_line(engine, people, tmp_path, faces_dir):
    from engine.identity.registry import get_analyzer

    with pytest.raises(InputError, match="at most 4") as e:
        engine.still(FACEID, "a crowd", out=tmp_path / "x.png", characters=["ava", "bob", "cyd", "ava", "bob"])
    assert "\n" not in str(e.value)
    dee = create_character("dee", [faces_dir / "obama.jpg"], None, get_analyzer())  # dlib only
    with engine.library() as lib:
        lib.add(dee)
    with pytest.raises(InputError, match=f"flx character reembed dee --encoder {ENCODERS[FACEID]}"):
        engine.still(FACEID, "a portrait", out=tmp_path / "x.png", characters=["dee"])
    with pytest.raises(InputError, match="conditions on a character"):
        engine.still(FACEID, "a portrait", out=tmp_path / "x.png")
    with pytest.raises(InputError, match="renders without identity"):
        engine.still("tiny-stills-sdxl", "a portrait", out=tmp_path / "x.png", characters=["ava"])
    assert not list(tmp_path.iterdir())  # nothing written


def test_score_still_tells_which_character_each_face_is(faces_dir):
    from PIL import Image

    from engine.identity.layout import layout
    from engine.identity.registry import get_analyzer
    from engine.scoring import reference_from_photos
    from engine.scoring.stills import score_still

    dlib = get_analyzer()
    a = Image.open(faces_dir / "obama.jpg").convert("RGB").resize((400, 500))
    b = Image.open(faces_dir / "biden.jpg").convert("RGB").crop((250, 0, 970, 900)).resize((400, 500))
    canvas = Image.new("RGB", (800, 500))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (400, 0))
    refs = [
        reference_from_photos([faces_dir / "obama2.jpg"], dlib),
        reference_from_photos([faces_dir / "biden.jpg"], dlib),
    ]
    regions = layout(2, 800, 500)
    right = score_still(np.asarray(canvas), refs, dlib, regions)
    assert [r.identified_index for r in right.regions] == [0, 1] and not right.swapped
    assert all(r.passes for r in right.regions)
    wrong = score_still(np.asarray(canvas), refs[::-1], dlib, regions)  # characters given in the other order
    assert wrong.swapped and [r.identified_index for r in wrong.regions] == [1, 0]
    assert all(r.passes is False for r in wrong.regions)


def _parse_a1111(text: str) -> tuple[str, str, dict[str, str]]:
    """A1111's `parameters` format, as other tools read it: prompt, `Negative prompt:` line, `Key: value, ...`."""
    lines = text.split("\n")
    tail = dict(part.split(": ", 1) for part in lines[-1].split(", "))
    neg = next((ln[len("Negative prompt: ") :] for ln in lines[1:-1] if ln.startswith("Negative prompt: ")), "")
    return lines[0], neg, tail


def test_still_files_carry_full_metadata_and_a1111_parameters(engine, tmp_path):
    from PIL import Image

    from engine.outputs import read_png_metadata

    outcome = engine.still(
        INSTANTID, "[char1] and [char2] at a cafe", out=tmp_path / "two.png", characters=["ava", "bob"],
        width=192, height=108, seed=5, candidates=2,
    )  # fmt: skip
    assert [c.path.name for c in outcome.candidates] == ["two-1.png", "two-2.png"]
    for k, c in enumerate(outcome.candidates):
        with Image.open(c.path) as im:
            assert im.size == (192, 108)  # the requested size, rendered at the nearest bucket
            params = im.text["parameters"]
        meta = read_png_metadata(c.path)
        assert meta == c.metadata and meta["seed"] == 5 + k
        assert meta["parameters"]["render_width"] == 80 and meta["parameters"]["render_height"] == 48
        ident = meta["identity"]
        assert ident["method"] == "instantid" and [x["name"] for x in ident["characters"]] == ["ava", "bob"]
        for x, ch in zip(ident["characters"], (engine.character("ava"), engine.character("bob"))):
            assert x["id"] == ch.id and x["version"] == ch.version and x["encoder_id"] == ENCODERS[INSTANTID]
            assert x["model_sha256"] == ch.embeddings[ENCODERS[INSTANTID]].model_sha256
        assert meta["prompt_composer"]["prompt_template"].startswith("flx-default v1")
        assert meta["consistency"]["encoder"]["encoder_id"] == "dlib-resnet-v1"
        assert "the person on the left" in meta["prompt"] and "ava" not in meta["prompt"]
        prompt, negative, tail = _parse_a1111(params)
        assert prompt == meta["prompt"] and negative == meta["negative_prompt"]
        assert tail["Seed"] == str(5 + k) and tail["Size"] == "192x108" and tail["Preset"] == INSTANTID
        assert tail["Identity"].startswith("instantid") and "ava v" in tail["Identity"]


def test_native_buckets():
    from engine.pipelines.buckets import native_size

    assert native_size(1920, 1080, 1024, 1024) == (1344, 768)
    assert native_size(1080, 1920, 1024, 1024) == (768, 1344)
    assert native_size(1024, 1024, 1024, 1024) == (1024, 1024)
    assert native_size(832, 1216, 1024, 1024) == (832, 1216)
    assert native_size(1920, 1080, 64, 64) == (80, 48)  # tiny presets get tiny buckets
    with pytest.raises(InputError):
        native_size(10_000, 1080, 1024, 1024)


def test_cli_still_with_characters_prints_each_candidate_and_its_score(engine, tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, FLX_HOME=str(engine.settings.home), FLX_WEIGHTS_DIR=str(engine.settings.weights_dir),
               COLUMNS="250")  # fmt: skip
    out = tmp_path / "cli.png"
    r = subprocess.run(
        [sys.executable, "-m", "engine.cli.main", "still", "--preset", FACEID, "--character", "ava",
         "--prompt", "a portrait", "-n", "2", "--out", str(out), "--width", "96", "--height", "64"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("wrote")]
    assert len(lines) == 2 and all("consistency" in ln and "ava:" in ln for ln in lines), r.stdout
    assert (tmp_path / "cli-1.png").is_file() and (tmp_path / "cli-2.png").is_file()
    r = subprocess.run(
        [sys.executable, "-m", "engine.cli.main", "still", "--preset", FACEID, "--character", "ava",
         "--prompt", "x", "--identity-strength", "5", "--out", str(tmp_path / "bad.png")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == InputError.exit_code and "--identity-strength" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad.png").exists()
