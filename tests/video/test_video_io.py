"""The one video I/O layer: the streaming H.264 writer, 16 -> 24 fps conversion, stitching, audio, resizing."""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from engine._core.errors import InputError

ENGINE = Path(__file__).resolve().parents[2] / "engine"


# ----- helpers ---------------------------------------------------------------------------------------------------


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (0, 0), 2)


def _moving(n: int, size=(96, 64), step: float = 3.0, seed: int = 0) -> np.ndarray:
    """`n` frames of a texture panning `step` px per frame (a clip with real motion)."""
    w, h = size
    tex = _texture(h, w + int(step * n) + 8, seed)
    return np.stack([np.ascontiguousarray(tex[:, int(step * i) : int(step * i) + w]) for i in range(n)])


def _solid(n: int, value: int, size=(64, 48)) -> np.ndarray:
    return np.full((n, size[1], size[0], 3), value, np.uint8)


def _sine_wav(path: Path, seconds: float, freq: float = 440.0, rate: int = 44100) -> Path:
    """A mono 16-bit sine WAV written with PyAV."""
    import av

    total = int(round(seconds * rate))
    with av.open(str(path), mode="w", format="wav") as c:
        stream = c.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        done = 0
        while done < total:
            n = min(4096, total - done)
            t = (np.arange(n) + done) / rate
            frame = av.AudioFrame.from_ndarray(
                (np.sin(2 * np.pi * freq * t) * 12000).astype(np.int16)[None], format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, done
            done += n
            for p in stream.encode(frame):
                c.mux(p)
        for p in stream.encode(None):
            c.mux(p)
    return path


def _decode(path: Path) -> tuple[list[np.ndarray], object]:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        info = {
            "codec": s.codec_context.name,
            "pix_fmt": s.codec_context.pix_fmt,
            "size": (s.width, s.height),
            "rate": s.average_rate,
            "comment": c.metadata.get("comment"),
            "audio": len(c.streams.audio),
        }
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return frames, info


def _audio(path: Path) -> tuple[list, np.ndarray, int]:
    """(audio streams, decoded samples of the first one (mono), its sample rate)."""
    import av

    with av.open(str(path)) as c:
        streams = [(s.codec_context.name, float(s.duration * s.time_base)) for s in c.streams.audio]
        rate = c.streams.audio[0].rate
        chunks = [f.to_ndarray().reshape(f.layout.nb_channels, -1)[0] for f in c.decode(audio=0)]
    return streams, np.concatenate(chunks), rate


def _peak_hz(samples: np.ndarray, rate: int) -> float:
    """The loudest frequency of the first half second."""
    seg = samples[: rate // 2]
    return float(np.fft.rfftfreq(len(seg), 1 / rate)[np.argmax(np.abs(np.fft.rfft(seg)))])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg, msg
    return msg


# ----- the writer ------------------------------------------------------------------------------------------------


def test_writer_round_trip(tmp_path):
    from engine.outputs import read_mp4_metadata, sidecar_path
    from engine.video import VideoWriter

    frames = _moving(12)
    meta = {"seed": 7, "prompt": "a walk", "fps_conversion": {"method": "minterpolate"}}
    out = tmp_path / "sub" / "clip.mp4"
    with VideoWriter(out, 24, (96, 64), metadata=meta) as w:
        w.write(frames[:5])  # a batch
        w.write(frames[5])  # one frame
        w.write(frames[6:].astype(np.float32) / 255.0)  # float in [0, 1]
    assert (w.frames, w.duration_s, w.size) == (12, 0.5, (96, 64)) and w.encode_s > 0
    decoded, info = _decode(out)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p" and info["size"] == (96, 64)
    assert info["rate"] == 24 and info["audio"] == 0
    assert len(decoded) == 12
    assert np.abs(decoded[8].astype(int) - frames[8]).mean() < 6  # lossy, but the same pictures in order
    assert np.abs(decoded[8].astype(int) - frames[2]).mean() > 3 * np.abs(decoded[8].astype(int) - frames[8]).mean()
    assert json.loads(info["comment"]) == meta == read_mp4_metadata(out)
    assert json.loads(sidecar_path(out).read_text()) == meta
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.json", "clip.mp4"]


def test_writer_takes_size_from_first_frame_and_writes_no_sidecar_without_metadata(tmp_path):
    from engine.video import VideoWriter

    with VideoWriter(tmp_path / "a.mp4", 24000 / 1001) as w:
        for f in _moving(5):
            w.write(f)
    decoded, info = _decode(tmp_path / "a.mp4")
    assert len(decoded) == 5 and info["size"] == (96, 64) and info["comment"] is None
    assert info["rate"] == Fraction(24000, 1001)
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]


def test_writer_is_atomic(tmp_path):
    from engine.video import VideoWriter

    seen = []
    with pytest.raises(RuntimeError, match="render crashed"):
        with VideoWriter(tmp_path / "clip.mp4", 24, (96, 64), metadata={"a": 1}) as w:
            w.write(_moving(4))
            seen = [p.name for p in tmp_path.iterdir()]
            raise RuntimeError("render crashed")
    assert len(seen) == 1 and seen[0].startswith(".clip.mp4.") and seen[0].endswith(".flx-tmp")
    assert not seen[0].endswith(".mp4")
    assert list(tmp_path.iterdir()) == []  # no file, no temp, no sidecar
    # an error raised by the writer itself (frames of another size) cleans up the same way
    with pytest.raises(InputError) as e:
        with VideoWriter(tmp_path / "clip.mp4", 24, (96, 64)) as w:
            w.write(_moving(3))
            w.write(_moving(3, size=(64, 48)))
    assert "64x48" in _one_line(e) and "96x64" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    # an existing file is only replaced when the new one is complete
    (tmp_path / "keep.mp4").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "keep.mp4", 24) as w:
            w.write(_moving(2))
            raise RuntimeError("stop")
    assert (tmp_path / "keep.mp4").read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_odd_sizes_are_padded_by_an_edge_pixel(tmp_path):
    from engine.outputs import save_mp4

    frames = _moving(3, size=(47, 33))
    frames[:, :, -1] = (255, 0, 0)  # last column red: the pad copies it
    save_mp4(tmp_path / "odd.mp4", frames)
    decoded, info = _decode(tmp_path / "odd.mp4")
    assert info["size"] == (48, 34) and len(decoded) == 3
    assert decoded[0][:33, 47, 0].mean() > 180 and decoded[0][:33, 47, 1:].mean() < 90
    assert np.abs(decoded[1][:33, :47].astype(int) - frames[1]).mean() < 8


def test_save_mp4_and_demo_writer_share_the_one_writer(tmp_path):
    """Only engine/video/writer.py opens an H.264 encoder; save_mp4 and the scoring demo go through it."""
    from engine.scoring.demo import write_video

    encoder = re.compile(r"add_stream\(\s*[\"'](lib)?x?264")
    hits = [p.relative_to(ENGINE).as_posix() for p in ENGINE.rglob("*.py") if encoder.search(p.read_text())]
    assert hits == ["video/writer.py"]
    out = write_video(iter(_moving(4, size=(47, 33))), tmp_path / "demo.mp4", 24.0)
    decoded, info = _decode(out)
    assert len(decoded) == 4 and info["size"] == (48, 34) and info["rate"] == 24


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fps": 0}, "between 1 and 240"),
        ({"fps": 500}, "between 1 and 240"),
        ({"fps": "fast"}, "number"),
        ({"size": (0, 10)}, "1..4096"),
        ({"size": (5000, 100)}, "1..4096"),
        ({"crf": 80}, "crf"),
        ({"path": "clip.mov"}, ".mp4"),
    ],
)
def test_writer_refuses_bad_settings(tmp_path, kwargs, match):
    from engine.video import VideoWriter

    args = {"path": "clip.mp4", "fps": 24, "size": (64, 48), **kwargs}
    with pytest.raises(InputError, match=match) as e:
        with VideoWriter(tmp_path / args.pop("path"), args.pop("fps"), args.pop("size"), **args) as w:
            w.write(_solid(2, 0))
    _one_line(e)
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_empty_and_broken_frames(tmp_path):
    from engine.outputs import save_mp4
    from engine.video import VideoWriter

    with pytest.raises(InputError, match="no frames") as e:
        with VideoWriter(tmp_path / "a.mp4", 24, (64, 48)):
            pass
    _one_line(e)
    with pytest.raises(InputError, match="no frames"):
        save_mp4(tmp_path / "b.mp4", np.zeros((0, 48, 64, 3), np.uint8), metadata={"a": 1})
    with pytest.raises(InputError, match="NaN"):
        with VideoWriter(tmp_path / "c.mp4", 24) as w:
            w.write(np.full((2, 8, 8, 3), np.inf, np.float32))
    assert list(tmp_path.iterdir()) == []


def test_writer_resizes_when_asked(tmp_path):
    from engine.video import VideoWriter

    with VideoWriter(tmp_path / "big.mp4", 24, (192, 128), resize=True) as w:
        w.write(_moving(3))
    decoded, info = _decode(tmp_path / "big.mp4")
    assert info["size"] == (192, 128) and len(decoded) == 3


# ----- frame rate ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 16, 17, 32, 81])
@pytest.mark.parametrize("method", ["minterpolate", "repeat"])
def test_16_to_24_fps_gives_one_and_a_half_times_the_frames(n, method):
    from engine.video import output_frame_count, to_fps

    frames = _moving(n, size=(48, 32))
    out, rec = to_fps(frames, 16, 24, method=method)
    expected = math.ceil(n * 1.5)
    assert out.shape == (expected, 32, 48, 3) and out.dtype == np.uint8
    if n % 2 == 0:
        assert out.shape[0] == n * 3 // 2
    assert output_frame_count(n, 16, 24) == expected
    assert rec["method"] == method and rec["frames_in"] == n and rec["frames_out"] == expected
    assert rec["count_rule"] == "ceil(frames_in * dst_fps / src_fps)" and rec["seconds"] >= 0
    # output frames whose time k/24 lies after the last source frame's time (n-1)/16
    assert rec["held_last"] == sum(1 for k in range(expected) if k / 24 > (n - 1) / 16)


def test_frame_count_rule_for_other_rates():
    from engine.video import output_frame_count

    assert output_frame_count(81, 16, 24) == 122  # 81 * 1.5 = 121.5 -> 122: nothing after 5.0625 s is dropped
    assert output_frame_count(120, 30, 24) == 96
    assert output_frame_count(121, 30, 24) == 97
    assert output_frame_count(48, 24, 24) == 48
    assert output_frame_count(24, 23.976, 24) == 25  # 24000/1001 fps: 24 frames last 1.001 s


def test_repeat_duplicates_frames_in_the_documented_pattern():
    from engine.video import to_fps

    frames = _moving(8)
    out, rec = to_fps(frames, 16, 24, method="repeat")
    assert rec["cadence"] == [2, 1] and "floor" in rec["pattern"]
    # output k shows source floor(k * 16 / 24): 0 0 1 2 2 3 4 4 5 6 6 7
    assert [int(np.flatnonzero([np.array_equal(o, f) for f in frames])[0]) for o in out] == [
        0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7,
    ]  # fmt: skip


def test_motion_compensated_frames_differ_from_repetition_and_track_the_motion():
    """A pattern panning 6 px per 16 fps frame: the true 24 fps frames pan 4 px. minterpolate's in-between frames
    are new pictures near the truth; repetition's are copies of a source frame, 2 px off the truth."""
    from engine.video import to_fps

    n = 16
    tex = _texture(80, 128 + 4 * 30, seed=3)
    truth = np.stack([np.ascontiguousarray(tex[:, 4 * k : 4 * k + 128]) for k in range(24)])  # 24 fps ground truth
    src = np.stack([np.ascontiguousarray(tex[:, 6 * i : 6 * i + 128]) for i in range(n)])  # 16 fps
    mci, rec = to_fps(src, 16, 24)
    rep, _ = to_fps(src, 16, 24, method="repeat")
    assert rec["filter"].startswith("minterpolate=fps=24/1:mi_mode=mci:") and "ffmpeg" in rec["library"]
    inner = [k for k in range(24) if k % 3 and k < 21]  # in-between frames with source frames on both sides
    for k in inner:
        assert not any(np.array_equal(mci[k], s) for s in src)  # a new picture, not a copy
        assert any(np.array_equal(rep[k], s) for s in src)  # an exact duplicate
    mci_psnr = np.mean([_psnr(mci[k], truth[k]) for k in inner])
    rep_psnr = np.mean([_psnr(rep[k], truth[k]) for k in inner])
    assert mci_psnr > rep_psnr + 3, (mci_psnr, rep_psnr)


def test_to_fps_refuses_bad_inputs_and_passes_equal_rates():
    from engine.video import to_fps

    with pytest.raises(InputError, match="no frames") as e:
        to_fps(np.zeros((0, 8, 8, 3), np.uint8), 16)
    _one_line(e)
    with pytest.raises(InputError, match="source fps must be between 1 and 240"):
        to_fps(_solid(4, 0), 0)
    with pytest.raises(InputError, match="target fps must be between 1 and 240"):
        to_fps(_solid(4, 0), 16, 1000)
    with pytest.raises(InputError, match="minterpolate, repeat"):
        to_fps(_solid(4, 0), 16, method="optical-flow")
    same, rec = to_fps(_solid(4, 9), 24, 24)
    assert rec["method"] == "none" and same.shape[0] == 4


# ----- stitching -------------------------------------------------------------------------------------------------


def test_stitch_hard_cuts_keep_every_frame(tmp_path):
    from engine.outputs import save_mp4
    from engine.video import stitch

    a = save_mp4(tmp_path / "a.mp4", _moving(10, size=(64, 48)))
    r = stitch([a, _moving(12, size=(64, 48), seed=1), _moving(14, size=(64, 48), seed=2)], tmp_path / "s.mp4")
    assert (r.frames, r.duration_s, r.fps, r.crossfade_frames, r.clip_frames) == (36, 1.5, 24.0, 0, [10, 12, 14])
    decoded, info = _decode(r.path)
    assert len(decoded) == 36 and info["rate"] == 24 and info["audio"] == 0


def test_stitch_crossfade_blends_k_frames_per_seam(tmp_path):
    from engine.video import stitch

    clips = [_solid(20, 0), _solid(20, 240), _solid(20, 0)]
    r = stitch(clips, tmp_path / "x.mp4", crossfade_s=0.25, metadata={"shot": "s1"})  # 0.25 s at 24 fps = 6 frames
    assert r.crossfade_frames == 6 and r.frames == 60 - 2 * 6 and r.clip_frames == [20, 20, 20]
    decoded, info = _decode(r.path)
    assert len(decoded) == 48
    means = [float(f.mean()) for f in decoded]
    # seam 1 is output frames 14..19, ramping up with weight (j+1)/7; seam 2 ramps down at 28..33
    for j in range(6):
        assert abs(means[14 + j] - 240 * (j + 1) / 7) < 8, means[12:22]
        assert abs(means[28 + j] - 240 * (6 - j) / 7) < 8, means[26:36]
    assert max(means[:14]) < 8 and min(means[20:28]) > 232 and max(means[34:]) < 8
    stitched = json.loads(info["comment"])["stitch"]
    assert stitched["crossfade_frames"] == 6 and json.loads(info["comment"])["shot"] == "s1"


def test_stitch_audio_replaces_the_clips_audio(tmp_path):
    from engine.video import VideoWriter, stitch

    with VideoWriter(tmp_path / "a.mp4", 24, (64, 48), audio=_sine_wav(tmp_path / "440.wav", 2.0, 440)) as w:
        w.write(_moving(24, size=(64, 48)))
    assert len(_audio(tmp_path / "a.mp4")[0]) == 1  # the clip has its own (440 Hz) track

    for seconds, name in ((0.7, "short"), (5.0, "long")):  # padded with silence / cut
        music = _sine_wav(tmp_path / f"{name}.wav", seconds, 880)
        r = stitch([tmp_path / "a.mp4", _moving(24, size=(64, 48), seed=4)], tmp_path / f"{name}.mp4", audio=music)
        assert r.frames == 48 and r.duration_s == 2.0
        streams, samples, rate = _audio(r.path)
        assert len(streams) == 1 and streams[0][0] == "aac"
        assert abs(streams[0][1] - r.duration_s) <= 1024 / rate, streams
        assert abs(len(samples) / rate - r.duration_s) <= 2 * 1024 / rate  # decoded length, priming included
        assert abs(_peak_hz(samples, rate) - 880) < 10  # the new track, not the clip's 440 Hz
        assert r.audio["codec"] == "aac" and r.audio["duration_s"] == 2.0
        if name == "short":
            assert r.audio["padded_s"] == pytest.approx(1.3, abs=0.01) and np.abs(samples[-rate // 4 :]).max() < 0.01
        else:
            assert r.audio["trimmed_s"] == pytest.approx(3.0, abs=0.01)


def test_writer_can_copy_an_aac_track(tmp_path):
    from engine.video import VideoWriter

    with VideoWriter(tmp_path / "src.mp4", 24, (64, 48), audio=_sine_wav(tmp_path / "s.wav", 3.0, 660)) as w:
        w.write(_solid(72, 50))
    with VideoWriter(tmp_path / "copy.mp4", 24, (64, 48), audio=tmp_path / "src.mp4", audio_codec="copy") as w:
        w.write(_solid(24, 90))
    streams, samples, rate = _audio(tmp_path / "copy.mp4")
    assert len(streams) == 1 and streams[0][0] == "aac" and w.audio_record["mode"] == "copy"
    assert abs(streams[0][1] - 1.0) <= 1024 / rate  # stopped at the video's end (to the packet)
    assert abs(_peak_hz(samples, rate) - 660) < 10
    with pytest.raises(InputError, match="cannot be copied") as e:
        with VideoWriter(tmp_path / "bad.mp4", 24, audio=tmp_path / "s.wav", audio_codec="copy") as w:
            w.write(_solid(2, 0))
    _one_line(e)


def test_stitch_refuses_bad_inputs(tmp_path):
    from engine.outputs import save_mp4
    from engine.video import stitch

    clip16 = save_mp4(tmp_path / "in" / "c16.mp4", _solid(8, 0), fps=16)
    (tmp_path / "in" / "noise.wav").write_bytes(b"this is not audio" * 100)
    out = tmp_path / "out" / "s.mp4"
    cases = [
        (([],), "no clips"),
        (([_solid(5, 0), _solid(5, 0, size=(32, 32))],), "32x32 but clip 1 is 64x48"),
        (([_solid(5, 0), np.zeros((0, 48, 64, 3), np.uint8)],), "clip 2 has no frames"),
        (([clip16, _solid(5, 0)],), "16 fps but the stitch is 24 fps"),
        (([tmp_path / "missing.mp4"],), "clip not found"),
        (([tmp_path / "in" / "noise.wav"],), "cannot open clip"),
        (([_solid(5, 0)] * 2, 24, 0.5), "fewer than the 12"),
        (([_solid(30, 0)] * 3, 24, -1), "0 or more seconds"),
        (([_solid(5, 0)], 500), "between 1 and 240"),
        (([_solid(5, 0)], 24, 0, tmp_path / "in" / "noise.wav"), "cannot read audio file"),
        (([_solid(5, 0)], 24, 0, tmp_path / "nope.wav"), "audio file not found"),
        (([_solid(5, 0)], 24, 0, clip16), "has no audio track"),
    ]
    for args, match in cases:
        with pytest.raises(InputError, match=match) as e:
            stitch(args[0], out, *args[1:])
        _one_line(e)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_stitch_detects_short_clip_files_while_reading(tmp_path, monkeypatch):
    """A clip file whose container gives no frame count is checked as it is decoded; no output is left."""
    import dataclasses
    import importlib

    from engine.outputs import save_mp4

    mod = importlib.import_module("engine.video.stitch")  # the module (engine.video.stitch is also the function)

    short = save_mp4(tmp_path / "short.mp4", _solid(4, 0))
    orig = mod.probe_clip
    monkeypatch.setattr(mod, "probe_clip", lambda p: dataclasses.replace(orig(p), frames=0))
    with pytest.raises(InputError, match="has 4 frames, fewer than the 12") as e:
        mod.stitch([_solid(30, 0), short, _solid(30, 0)], tmp_path / "out.mp4", crossfade_s=0.25)
    _one_line(e)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.mp4"]


# ----- resizing --------------------------------------------------------------------------------------------------


def test_fit_size_and_lanczos_resize():
    from engine.video import fit_size, resize_frames

    assert fit_size(832, 480) == (1872, 1080)
    assert fit_size(1280, 720) == (1920, 1080)
    assert fit_size(480, 832) == (624, 1080)
    assert fit_size(640, 360, upscale=False) == (640, 360)
    assert fit_size(3840, 2160) == (1920, 1080)

    # a smooth picture sampled at half resolution, upscaled 2x, comes back close to the full-resolution one
    def picture(scale: float, w: int, h: int) -> np.ndarray:
        yy, xx = (np.mgrid[0:h, 0:w].astype(np.float32) + 0.5) * scale - 0.5  # pixel centres, as resizers use
        return (np.stack([np.sin(xx / 9), np.cos(yy / 7), np.sin((xx + yy) / 11)], -1) * 100 + 128).astype(np.uint8)

    big, small = picture(1, 128, 96), picture(2, 64, 48)
    up = resize_frames(small, (128, 96))
    nearest = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    err, err_nearest = np.abs(up[0].astype(int) - big).mean(), np.abs(nearest.astype(int) - big).mean()
    assert up.shape == (1, 96, 128, 3) and err < 1.5 and err < err_nearest / 2, (err, err_nearest)
    with pytest.raises(InputError, match="1..4096"):
        resize_frames(small, (0, 10))
