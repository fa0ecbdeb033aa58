"""The other Wan layouts on their tiny twins: VACE continuation, first + last frame (FLF2V), Wan 2.2 I2V A14B."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine._core.errors import InputError


def _img(colour):
    return Image.new("RGB", (64, 64), colour)


def test_vace_continues_from_the_given_frames(load_tiny):
    from engine.pipelines.render import render_clip

    loaded = load_tiny("tiny-video-wan21-vace-14b")
    free = render_clip(loaded, "a person walks", seed=1)
    assert free.frames.shape == (loaded.preset.num_frames, 64, 64, 3)
    prev = np.stack([np.full((64, 64, 3), v, np.uint8) for v in (30, 60, 90)])
    cont = render_clip(loaded, "a person walks", seed=1, conditioning_frames=list(prev), output_type="latent")
    again = render_clip(loaded, "a person walks", seed=1, conditioning_frames=list(prev), output_type="latent")
    other = render_clip(loaded, "a person walks", seed=1, conditioning_frames=list(255 - prev), output_type="latent")
    assert cont.metadata["parameters"]["conditioning_frames"] == 3
    assert (cont.latents == again.latents).all()
    assert (cont.latents - other.latents).abs().mean() > 1e-5  # the frames condition the clip (judged in latents)
    with pytest.raises(InputError, match="conditioning frames"):
        render_clip(loaded, "x", conditioning_frames=[prev[0]] * loaded.preset.num_frames)


def test_flf2v_needs_both_frames_and_uses_the_last(load_tiny):
    from engine.pipelines.render import render_clip

    loaded = load_tiny("tiny-video-wan21-flf2v-14b-720p")
    kw = {"seed": 2, "output_type": "latent"}
    a = render_clip(loaded, "turns", _img((200, 50, 50)), last_image=_img((50, 200, 50)), **kw)
    b = render_clip(loaded, "turns", _img((200, 50, 50)), last_image=_img((50, 50, 200)), **kw)
    assert a.metadata["parameters"]["end_image"] is True
    assert (a.latents - b.latents).abs().mean() > 1e-5  # the end frame conditions the clip
    with pytest.raises(InputError, match="end-image"):
        render_clip(loaded, "turns", _img((1, 2, 3)))


def test_wan22_i2v_two_experts_and_end_frame_support(load_tiny):
    from engine.pipelines.render import render_clip

    loaded = load_tiny("tiny-video-wan22-i2v-a14b")
    assert loaded.pipe.transformer_2 is not None and loaded.pipe.config.boundary_ratio == 0.9
    clip = render_clip(loaded, "turns", _img((120, 90, 80)), seed=3, last_image=_img((10, 10, 10)))
    assert clip.frames.shape[0] == loaded.preset.num_frames
    plain_i2v = load_tiny("tiny-video-wan21-i2v-480p")
    with pytest.raises(InputError, match="no end-frame conditioning"):
        render_clip(plain_i2v, "turns", _img((1, 2, 3)), last_image=_img((3, 2, 1)))
    ti2v = load_tiny("tiny-video-wan22-ti2v-5b")
    with pytest.raises(InputError, match="no end-frame conditioning"):
        render_clip(ti2v, "turns", _img((1, 2, 3)), last_image=_img((3, 2, 1)))
