"""Prompts over CLIP's 77 tokens are encoded in pieces, not cut (two characters' clauses already need it)."""

from __future__ import annotations

import torch

from engine.pipelines.long_prompt import CHUNK_TOKENS, split_text, token_count

LONG = "a portrait of a person, auburn hair, green eyes, " + ", ".join(f"detail number {i}" for i in range(30))


def test_pieces_fit_and_keep_every_word(load_tiny):
    tok = load_tiny("tiny-stills-sdxl").pipe.tokenizer
    pieces = split_text(tok, LONG)
    assert len(pieces) > 1 and all(token_count(tok, p) <= CHUNK_TOKENS for p in pieces)
    assert ", ".join(pieces) == LONG  # cut at clause boundaries, nothing lost


def test_the_end_of_a_long_prompt_reaches_the_model(load_tiny):
    import diffusers

    from engine.pipelines.render import render_still

    loaded = load_tiny("tiny-stills-sdxl")
    alt = LONG.replace("detail number 29", "a red hat")
    ours = render_still(loaded, LONG, None, 1, output_type="latent")
    ours_alt = render_still(loaded, alt, None, 1, output_type="latent")
    assert ours.metadata["parameters"]["prompt_chunks"] > 1
    assert (ours.images[0] - ours_alt.images[0]).abs().mean() > 1e-4  # the last clause changes the image
    # negative control: the plain pipeline cuts at 77 tokens, so the same change does nothing there
    pipe = loaded.pipe
    plain = [
        pipe(p, num_inference_steps=2, generator=torch.Generator().manual_seed(1), output_type="latent").images[0]
        for p in (LONG, alt)
    ]
    assert torch.equal(plain[0], plain[1])
    assert isinstance(pipe, diffusers.StableDiffusionXLPipeline)


def test_short_prompts_render_exactly_as_diffusers_does(load_tiny):
    from engine.pipelines.render import render_still

    loaded = load_tiny("tiny-stills-sdxl")
    ours = render_still(loaded, "a portrait", None, 3, output_type="latent")
    plain = loaded.pipe(
        "a portrait",
        num_inference_steps=loaded.preset.steps,
        guidance_scale=loaded.preset.guidance,
        width=loaded.preset.width,
        height=loaded.preset.height,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
    ).images[0]
    assert ours.metadata["parameters"]["prompt_chunks"] == 1 and torch.equal(ours.images[0], plain)
