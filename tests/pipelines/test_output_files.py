"""PNG and MP4 writers: metadata round trips, odd sizes, float frames, no partial files."""

from __future__ import annotations

import numpy as np
import pytest


def _meta():
    return {
        "seed": 42,
        "prompt": "a portrait, 50mm",
        "negative_prompt": "blurry",
        "preset": "tiny-stills-sdxl",
        "engine_version": "0.1.0",
        "parameters": {"width": 64, "height": 64, "steps": 4, "guidance": 6.0, "scheduler": "EulerDiscreteScheduler"},
        "models": {"base": {"id": "tiny-sdxl-base", "sha256": "sha256:" + "ab" * 32}},
        "character": None,
    }


def test_png_metadata_round_trip(load_tiny, tmp_path):
    from PIL import Image

    from engine.outputs import read_png_metadata, save_png
    from engine.pipelines.render import render_still

    result = render_still(load_tiny("tiny-stills-sdxl"), "a portrait, 50mm", seed=42)
    path = save_png(tmp_path / "out" / "still.png", result.images[0], result.metadata)
    assert read_png_metadata(path) == result.metadata
    with Image.open(path) as im:
        params = im.text["parameters"]
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(result.images[0]))
    lines = params.splitlines()
    assert lines[0] == "a portrait, 50mm"
    assert "Seed: 42" in lines[-1] and "Steps: 4" in lines[-1] and "Model: tiny-sdxl-base" in lines[-1]
    assert [p.name for p in path.parent.iterdir()] == ["still.png"]  # no temp files left


def test_mp4_odd_sides_and_float_frames(tmp_path):
    import av

    from engine.outputs import read_mp4_metadata, save_mp4

    rng = np.random.default_rng(0)
    frames = rng.random((5, 33, 47, 3), dtype=np.float32)
    path = save_mp4(tmp_path / "odd.mp4", frames, fps=24, metadata=_meta())
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert (s.width, s.height) == (48, 34)
        assert s.codec_context.pix_fmt == "yuv420p"
        first = next(c.decode(video=0)).to_ndarray(format="rgb24")
    # float [0, 1] was scaled once (not wrapped): mean brightness stays near 0.5 * 255.
    assert abs(first[:33, :47].mean() - frames[0].mean() * 255) < 10
    assert read_mp4_metadata(path)["seed"] == 42


def test_writers_refuse_wrong_inputs(tmp_path):
    from PIL import Image

    from engine._core.errors import InputError
    from engine.outputs import save_mp4, save_png

    with pytest.raises(InputError, match=".png"):
        save_png(tmp_path / "x.jpg", Image.new("RGB", (8, 8)), _meta())
    with pytest.raises(InputError, match="shaped"):
        save_mp4(tmp_path / "x.mp4", np.zeros((4, 8, 8), dtype=np.uint8))
    with pytest.raises(InputError, match="NaN"):
        save_mp4(tmp_path / "x.mp4", np.full((5, 8, 8, 3), np.nan, dtype=np.float32))
    assert list(tmp_path.iterdir()) == []
