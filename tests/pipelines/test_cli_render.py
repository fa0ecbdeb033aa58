"""`flx still` / `flx clip` / `flx doctor` as a user runs them: real pipelines on the tiny twins, and every
bad input ending in one line and a non-zero exit, with nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys

import av

from engine._core.errors import ConfigError, DeviceError, InputError, ModelNotFound, OutputError
from engine.outputs import read_png_metadata


def flx(*args, weights, home):
    env = dict(os.environ, FLX_WEIGHTS_DIR=str(weights), FLX_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True, env=env, timeout=300
    )


def one_line_error(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_still_then_clip_from_it(tiny_weights_dir, tmp_path):
    png = tmp_path / "out" / "still.png"
    r = flx(
        "still",
        "--preset",
        "tiny-stills-sdxl",
        "--prompt",
        "a portrait",
        "--seed",
        "3",
        "--out",
        str(png),
        weights=tiny_weights_dir,
        home=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    meta = read_png_metadata(png)
    assert meta["seed"] == 3 and meta["preset"] == "tiny-stills-sdxl"
    assert meta["models"]["base"]["id"] == "tiny-sdxl-base" and meta["models"]["base"]["sha256"].startswith("sha256:")
    mp4 = tmp_path / "out" / "clip.mp4"
    r = flx(
        "clip",
        "--preset",
        "tiny-video-wan21-i2v-480p",
        "--prompt",
        "turns",
        "--image",
        str(png),
        "--out",
        str(mp4),
        weights=tiny_weights_dir,
        home=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    with av.open(str(mp4)) as c:
        s = c.streams.video[0]
        assert s.average_rate == 24 and sum(1 for _ in c.decode(video=0)) == 9
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_bad_inputs_are_one_line_and_nonzero(tiny_weights_dir, tmp_path):
    empty = tmp_path / "empty-weights"
    cases = [
        (
            ("still", "--preset", "no-such", "--prompt", "x", "--out", str(tmp_path / "a.png")),
            tiny_weights_dir,
            ConfigError.exit_code,
            "unknown preset 'no-such'",
        ),
        (
            ("still", "--preset", "tiny-stills-sdxl", "--prompt", "x", "--out", str(tmp_path / "a.png")),
            empty,
            ModelNotFound.exit_code,
            "make_tiny_weights",
        ),
        (
            (
                "--device",
                "cuda",
                "still",
                "--preset",
                "tiny-stills-sdxl",
                "--prompt",
                "x",
                "--out",
                str(tmp_path / "a.png"),
            ),
            tiny_weights_dir,
            DeviceError.exit_code,
            "CUDA was requested",
        ),
        (
            ("still", "--preset", "tiny-stills-sdxl", "--prompt", "x", "--out", "/proc/flx/a.png"),
            tiny_weights_dir,
            OutputError.exit_code,
            "cannot write to output folder",
        ),
        (("doctor", "-p", "tiny-stills-sdxl"), empty, 3, "tiny-sdxl-base missing"),
        (
            (
                "still",
                "--preset",
                "tiny-stills-sdxl",
                "--prompt",
                "x",
                "--steps",
                "0",
                "--out",
                str(tmp_path / "a.png"),
            ),
            tiny_weights_dir,
            InputError.exit_code,
            "--steps must be a whole number from 1 to 200",
        ),
        (
            ("still", "--preset", "tiny-stills-faceid-sdxl", "--prompt", "x", "--out", str(tmp_path / "a.png")),
            tiny_weights_dir,
            InputError.exit_code,
            "conditions on a character",
        ),
    ]
    for args, weights, code, text in cases:
        r = flx(*args, weights=weights, home=tmp_path)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert text in one_line_error(r), (args, r.stderr)
    assert not (tmp_path / "a.png").exists()


def test_doctor_lists_presets_and_passes_for_tiny(tiny_weights_dir, tmp_path):
    r = flx(
        "doctor", "-p", "tiny-stills-sdxl", "-p", "tiny-video-wan21-i2v-480p", weights=tiny_weights_dir, home=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert "onnxruntime" in r.stdout and "tiny-video-wan22-ti2v-5b" in r.stdout
    r = flx("doctor", "-p", "video-wan21-i2v-480p", weights=tiny_weights_dir, home=tmp_path)
    assert r.returncode == 3 and "needs a CUDA GPU" in one_line_error(r)
