"""Tiny Wan clips through the real load + render path, written as MP4 and read back with PyAV."""

from __future__ import annotations

import json

import numpy as np
import pytest


def test_i2v_clip_renders_and_saves_mp4(load_tiny, face_image, tmp_path):
    import av

    from engine.outputs import read_mp4_metadata, save_mp4, sidecar_path
    from engine.pipelines.render import render_clip

    loaded = load_tiny("tiny-video-wan21-i2v-480p")
    clip = render_clip(loaded, "a man turns his head", image=face_image, seed=3)
    assert clip.frames.shape == (9, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.fps == 24
    again = render_clip(loaded, "a man turns his head", image=face_image, seed=3)
    assert np.array_equal(clip.frames, again.frames)

    out = save_mp4(tmp_path / "clip.mp4", clip.frames, fps=clip.fps, metadata=clip.metadata)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.average_rate == 24
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 9 and decoded[0].shape == (64, 64, 3)
    # H.264 is lossy; the decoded frames still track the rendered ones.
    assert np.abs(decoded[4].astype(int) - clip.frames[4].astype(int)).mean() < 12
    meta = read_mp4_metadata(out)
    assert meta["seed"] == 3 and meta["parameters"]["num_frames"] == 9 and meta["parameters"]["fps"] == 24
    assert meta["models"]["base"]["id"] == "tiny-wan21-i2v"
    assert json.loads(sidecar_path(out).read_text()) == meta


@pytest.mark.parametrize(
    ("preset", "needs_image", "shape"),
    [
        ("tiny-video-wan22-ti2v-5b", True, (9, 64, 64, 3)),
        ("tiny-video-wan21-t2v-1.3b", False, (9, 64, 64, 3)),
        ("tiny-video-wan21-i2v-720p", True, (9, 48, 96, 3)),
    ],
)
def test_other_video_presets_render(load_tiny, face_image, preset, needs_image, shape):
    from engine.pipelines.render import render_clip

    loaded = load_tiny(preset)
    clip = render_clip(loaded, "a man walks", image=face_image if needs_image else None, seed=0)
    assert clip.frames.shape == shape
    assert clip.frames.std() > 0


def test_ti2v_also_renders_from_text_alone(load_tiny):
    from engine.pipelines.render import render_clip

    loaded = load_tiny("tiny-video-wan22-ti2v-5b")
    clip = render_clip(loaded, "a man walks", seed=0)
    assert clip.frames.shape == (9, 64, 64, 3)
    assert clip.metadata["parameters"]["start_image"] is False


def test_clip_rejects_bad_inputs(load_tiny, face_image):
    from engine._core.errors import InputError
    from engine.pipelines.render import render_clip

    i2v = load_tiny("tiny-video-wan21-i2v-480p")
    with pytest.raises(InputError, match="start image"):
        render_clip(i2v, "a man")
    with pytest.raises(InputError, match="4k\\+1"):
        render_clip(i2v, "a man", image=face_image, num_frames=10)
    with pytest.raises(InputError, match="text-to-video"):
        render_clip(load_tiny("tiny-video-wan21-t2v-1.3b"), "a man", image=face_image)
