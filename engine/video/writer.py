"""The engine's one H.264 MP4 writer: streaming, atomic, with metadata and an optional audio track.

Every MP4 the engine writes (clips, stitched sequences, the scoring demo clips) goes through `VideoWriter`, so
the rules live in one place: H.264 (libx264) in yuv420p, odd sides padded by one edge row/column, the metadata
JSON in the container's `comment` tag and in a `.json` sidecar written after the video, and the file written to
an atomic temp path (never ending in `.mp4`) that is renamed onto the destination only when everything worked.

Frames are written as they come (a batch or a single frame per `write`), so a long sequence never has to sit in
memory. An audio track is interleaved as the video goes: re-encoded to AAC and cut or padded with silence to the
video's exact length (the default), or its packets copied unchanged and dropped from the video's end on.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from engine._core.atomic import atomic_path, atomic_write_text
from engine._core.errors import InputError, OutputError
from engine.outputs import check_output_path, sidecar_path, to_uint8_frames

MIN_FPS, MAX_FPS = 1, 240
MAX_SIDE = 4096  # H.264 level 5.2 covers 4096x2304; the engine renders at most 1920x1080 (see resize.py)
AAC_RATES = (44100, 48000)  # kept as they are; any other source rate is resampled to 48 kHz
AAC_FRAME = 1024  # samples per AAC frame: the audio length is exact to the sample, the packets to this
COPYABLE_AUDIO = {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"}  # codecs the MP4 muxer takes as they are


def check_fps(fps, what: str = "fps") -> Fraction:
    """`fps` as an exact rate (23.976 -> 24000/1001), refused outside 1..240 with one line."""
    try:
        rate = Fraction(fps).limit_denominator(1001)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number between {MIN_FPS} and {MAX_FPS} (got {fps!r})") from None
    if not MIN_FPS <= rate <= MAX_FPS:
        raise InputError(f"{what} must be between {MIN_FPS} and {MAX_FPS} (got {fps})")
    return rate


def _check_size(size) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"video size must be (width, height) in pixels (got {size!r})") from None
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
        raise InputError(f"video size {w}x{h} is outside 1..{MAX_SIDE} pixels a side: render or resize to fit")
    return w, h


def even_pad(arr: np.ndarray) -> np.ndarray:
    """Pad odd heights/widths of (F, H, W, 3) frames by one edge row/column: yuv420p needs even sides."""
    pad_h, pad_w = arr.shape[1] % 2, arr.shape[2] % 2
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return arr


def as_batch(frame_or_batch) -> np.ndarray:
    """(F, H, W, 3) uint8 from one frame (H, W, 3) / PIL image or a batch (uint8, float in [0, 1], PIL list)."""
    if isinstance(frame_or_batch, np.ndarray):
        if frame_or_batch.ndim == 3:
            frame_or_batch = frame_or_batch[None]
    elif hasattr(frame_or_batch, "mode") and hasattr(frame_or_batch, "size"):  # one PIL image
        frame_or_batch = [frame_or_batch]
    arr = to_uint8_frames(frame_or_batch)
    if arr.shape[0] and (arr.shape[1] == 0 or arr.shape[2] == 0):
        raise InputError(f"frames have no pixels (shape {tuple(arr.shape)}): check the render size")
    return arr


def _io_error(path: Path, e: BaseException) -> OutputError:
    return OutputError(f"cannot write '{path}': {getattr(e, 'strerror', None) or e}: check the disk and folder")


class _AudioTrack:
    """An audio file muxed under the video: opened and checked before any frame is encoded, then fed in step
    with the video (`feed(t)` writes audio up to `t` seconds) and ended at the video's length (`finish`)."""

    def __init__(self, source: str | os.PathLike, codec: str):
        import av

        self.source = Path(source)
        if codec not in ("aac", "copy"):
            raise InputError(f"audio_codec must be 'aac' (re-encode) or 'copy' (got {codec!r})")
        self.codec = codec
        if not self.source.is_file():
            raise InputError(f"audio file not found: '{self.source}': check the path")
        try:
            self._in = av.open(str(self.source))
        except (av.FFmpegError, OSError, ValueError) as e:
            raise InputError(
                f"cannot read audio file '{self.source}' ({_first_line(e)}): give a WAV, MP3, AAC/M4A, FLAC or Opus file"
            ) from None
        if not self._in.streams.audio:
            self._in.close()
            raise InputError(f"'{self.source}' has no audio track: give a file with sound (WAV, MP3, AAC/M4A, FLAC)")
        self._src = self._in.streams.audio[0]
        name = self._src.codec_context.codec.canonical_name  # "mp3", not the decoder "mp3float"
        if codec == "copy" and name not in COPYABLE_AUDIO:
            self._in.close()
            raise InputError(
                f"audio codec '{name}' of '{self.source}' cannot be copied into MP4: use audio_codec='aac' (re-encode)"
            )
        self.channels = 1 if self._src.codec_context.channels == 1 else 2
        self.layout = "mono" if self.channels == 1 else "stereo"
        self.rate = self._src.rate if self._src.rate in AAC_RATES else 48000
        if self._src.duration and self._src.time_base:
            self.source_duration_s: float | None = float(self._src.duration * self._src.time_base)
        else:
            self.source_duration_s = self._in.duration / 1_000_000 if self._in.duration else None
        self._out = None
        self._done_s = 0.0  # copy: end of the last packet written, in seconds
        self._samples = 0  # aac: samples written
        self._buf = np.zeros((self.channels, 0), np.float32)
        self._source_samples = 0
        self._source_ended = False
        self._packets = None  # copy: the source's packets, and the one read but not yet due
        self._pending = None
        self._start = None  # copy: the first packet's time, which becomes 0
        self.record: dict[str, Any] = {"source": str(self.source), "source_codec": name}

    def add_stream(self, container) -> None:
        """Add the output stream (before the first packet is muxed: MP4 writes its header then)."""
        import av

        if self.codec == "copy":
            self._out = container.add_stream_from_template(self._src)
            self._packets = self._in.demux(self._src)
        else:
            self._out = container.add_stream("aac", rate=self.rate)
            self._out.codec_context.layout = self.layout
            self._out.codec_context.format = "fltp"
            self._out.codec_context.bit_rate = 96_000 * self.channels
            self._resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate)
            self._frames = self._in.decode(self._src)

    # --- aac: decode, resample, cut to the exact sample ------------------------------------------------------
    def _pull_source(self) -> bool:
        """Append the next decoded, resampled source frame to the buffer; False once the source has ended."""
        import av

        if self._source_ended:
            return False
        try:
            frame = next(self._frames)
        except StopIteration:
            frame = None
        except av.FFmpegError as e:
            raise InputError(
                f"audio file '{self.source}' is damaged after {self._source_samples / self.rate:.2f} s "
                f"({_first_line(e)}): re-export it"
            ) from None
        out = self._resampler.resample(frame)
        if frame is None:
            self._source_ended = True
        for f in out:
            arr = f.to_ndarray().reshape(self.channels, -1).astype(np.float32, copy=False)
            self._source_samples += arr.shape[1]
            self._buf = np.concatenate([self._buf, arr], axis=1)
        return not self._source_ended or bool(out)

    def _encode(self, container, samples: np.ndarray) -> None:
        import av

        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=self.layout)
        frame.sample_rate = self.rate
        frame.pts = self._samples
        frame.time_base = Fraction(1, self.rate)
        self._samples += samples.shape[1]
        for packet in self._out.encode(frame):
            container.mux(packet)

    def _write_until(self, container, target: int, *, final: bool) -> None:
        """Encode up to sample `target`: whole AAC frames while streaming; at the end (`final`) the last partial
        frame too, padded with silence where the source ran out."""
        while self._samples < target:
            want = min(AAC_FRAME, target - self._samples)
            if want < AAC_FRAME and not final:
                return
            while self._buf.shape[1] < want and self._pull_source():
                pass
            if self._buf.shape[1] < want:
                if not final:
                    return
                gap = want - self._buf.shape[1]
                self._buf = np.concatenate([self._buf, np.zeros((self.channels, gap), np.float32)], axis=1)
            self._encode(container, self._buf[:, :want])
            self._buf = self._buf[:, want:]

    # --- copy: packets as they are ----------------------------------------------------------------------------
    def _copy_until(self, container, until_s: float) -> None:
        """Mux the source's packets that start before `until_s`, shifted so the first starts at 0."""
        import av

        while True:
            if self._pending is None:
                try:
                    packet = next(self._packets)
                except StopIteration:
                    self._source_ended = True
                    return
                except av.FFmpegError as e:
                    raise InputError(
                        f"audio file '{self.source}' is damaged ({_first_line(e)}): re-export it"
                    ) from None
                if packet.pts is None or packet.size == 0:
                    continue
                self._pending = packet
            packet = self._pending
            if self._start is None:
                self._start = packet.pts
            start_s = float((packet.pts - self._start) * packet.time_base)
            if start_s >= until_s:
                return
            shift = self._start
            packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            packet.stream = self._out
            container.mux(packet)
            self._done_s = start_s + float((packet.duration or 0) * packet.time_base)
            self._pending = None

    def feed(self, container, until_s: float) -> None:
        """Write audio up to `until_s` seconds (the video written so far), so the two streams interleave."""
        if self.codec == "copy":
            self._copy_until(container, until_s)
        else:
            self._write_until(container, int(round(until_s * self.rate)), final=False)

    def finish(self, container, duration_s: float) -> dict[str, Any]:
        """End the track at the video's length: pad with silence (aac) or stop at the last packet (copy)."""
        if self.codec == "copy":
            self._copy_until(container, duration_s)
            written = self._done_s
            self.record.update(codec=self.record["source_codec"], mode="copy", duration_s=round(written, 4))
        else:
            target = int(round(duration_s * self.rate))
            self._write_until(container, target, final=True)
            for packet in self._out.encode(None):
                container.mux(packet)
            src = self.source_duration_s
            if self._source_ended:  # decoded to its end: the exact length
                src = self._source_samples / self.rate
            self.record.update(
                codec="aac",
                mode="re-encoded",
                sample_rate=self.rate,
                channels=self.channels,
                duration_s=round(target / self.rate, 4),
                source_duration_s=None if src is None else round(src, 4),
                padded_s=None if src is None else round(max(0.0, duration_s - src), 4),
                trimmed_s=None if src is None else round(max(0.0, src - duration_s), 4),
            )
        return self.record

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._in.close()


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:160]


class VideoWriter:
    """Streaming H.264 MP4 writer (context manager). Nothing appears at `path` unless the `with` block ends cleanly.

    Args:
        path: destination `.mp4` (its folder is created; a symlink or device there is refused).
        fps: frame rate, 1..240 (24 for every engine output; 23.976 is kept as 24000/1001).
        size: (width, height) of the frames, or None to take it from the first frame. Odd sides are padded by one
            edge pixel (yuv420p needs even sides). With `resize=True` frames of another size are Lanczos-resized to it.
        crf: x264 quality (lower is better; 18 is visually lossless for renders).
        metadata: stored as JSON in the `comment` tag and, after the video, in the `<name>.json` sidecar
            (no sidecar when None, like `save_mp4`).
        audio: an audio file muxed as the only audio track; `audio_codec="aac"` re-encodes it and cuts or pads it
            with silence to the video's length, `"copy"` copies its packets and stops at the video's end.
        preset: x264 speed preset ("medium" is x264's default; "veryfast" for test and demo clips).

    After the block: `frames`, `duration_s`, `size` (as encoded), `encode_s` (seconds spent converting, encoding and
    muxing: the "encode" share of a benchmark) and `audio_record`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps=24,
        size: tuple[int, int] | None = None,
        *,
        crf: int = 18,
        metadata: dict[str, Any] | None = None,
        audio: str | os.PathLike | None = None,
        audio_codec: str = "aac",
        preset: str = "medium",
        resize: bool = False,
    ):
        self.path = check_output_path(path, ".mp4")
        self.rate = check_fps(fps)
        self.fps = float(self.rate)
        self._want = _check_size(size) if size is not None else None
        if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
            raise InputError(
                f"crf must be a whole number between 0 and 51 (got {crf!r}): 18 is visually lossless, 23 is x264's default"
            )
        self.crf, self.preset, self.resize = crf, str(preset), bool(resize)
        self.metadata = metadata
        self._audio_source, self._audio_codec = audio, audio_codec
        self.frames = 0
        self.encode_s = 0.0
        self.size: tuple[int, int] | None = None
        self.audio_record: dict[str, Any] | None = None
        self._stack: contextlib.ExitStack | None = None
        self._container = None
        self._stream = None
        self._audio: _AudioTrack | None = None

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps

    def __enter__(self) -> VideoWriter:
        import av

        stack = contextlib.ExitStack()
        try:
            if self._audio_source is not None:  # checked before anything is written
                self._audio = _AudioTrack(self._audio_source, self._audio_codec)
                stack.callback(self._audio.close)
            tmp = stack.enter_context(atomic_path(self.path))
            self._container = stack.enter_context(av.open(str(tmp), mode="w", format="mp4"))
            if self.metadata:
                self._container.metadata["comment"] = json.dumps(self.metadata, sort_keys=True, default=str)
        except OSError as e:
            stack.close()
            raise _io_error(self.path, e) from None
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def _start(self, frame_w: int, frame_h: int) -> None:
        w, h = self._want or (frame_w, frame_h)
        _check_size((w, h))
        self._want = (w, h)
        self.size = (w + w % 2, h + h % 2)
        stream = self._container.add_stream("libx264", rate=self.rate)
        stream.width, stream.height = self.size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(self.crf), "preset": self.preset}
        stream.codec_context.thread_count = 0  # x264's own frame threads, one per core (1.4x on 2 cores)
        self._stream = stream
        if self._audio is not None:
            self._audio.add_stream(self._container)

    def write(self, frame_or_batch) -> None:
        """Encode one frame (H, W, 3) or a batch (F, H, W, 3): uint8, float in [0, 1], or PIL images."""
        import av

        if self._stack is None:
            raise RuntimeError("VideoWriter.write() called outside its `with` block")
        arr = as_batch(frame_or_batch)
        if arr.shape[0] == 0:
            return
        t0 = time.perf_counter()
        h, w = arr.shape[1:3]
        if self._stream is None:
            self._start(w, h)
        if (w, h) != self._want:
            if not self.resize:
                raise InputError(
                    f"frame {self.frames} is {w}x{h} but the video is {self._want[0]}x{self._want[1]}: "
                    "give frames of one size (or resize=True to resize them)"
                )
            from .resize import resize_frames

            arr = resize_frames(arr, self._want)
        arr = even_pad(arr)
        try:
            for frame in arr:
                for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    self._container.mux(packet)
                self.frames += 1
                if self._audio is not None:  # audio up to the video written so far: the streams interleave
                    self._audio.feed(self._container, self.duration_s)
        except OSError as e:
            raise _io_error(self.path, e) from None
        finally:
            self.encode_s += time.perf_counter() - t0

    def _finish(self) -> None:
        if self.frames == 0:
            raise InputError(f"no frames were given for '{self.path.name}': the render or clip list produced nothing")
        t0 = time.perf_counter()
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            if self._audio is not None:
                self.audio_record = self._audio.finish(self._container, self.duration_s)
        except OSError as e:
            raise _io_error(self.path, e) from None
        finally:
            self.encode_s += time.perf_counter() - t0

    def __exit__(self, exc_type, exc, tb) -> bool:
        stack, self._stack = self._stack, None
        if stack is None:
            return False
        if exc_type is None:
            try:
                self._finish()
            except BaseException as e:
                if not stack.__exit__(type(e), e, e.__traceback__):
                    raise
                return False
        try:
            handled = stack.__exit__(exc_type, exc, tb)  # closes the container, then renames (or deletes) the temp
        except OSError as e:
            raise _io_error(self.path, e) from None
        if exc_type is None and self.metadata is not None:
            text = json.dumps(self.metadata, indent=2, sort_keys=True, default=str) + "\n"
            try:
                atomic_write_text(sidecar_path(self.path), text)
            except OSError as e:
                raise _io_error(sidecar_path(self.path), e) from None
        return bool(handled)


__all__ = ["MAX_FPS", "MAX_SIDE", "MIN_FPS", "VideoWriter", "as_batch", "check_fps", "even_pad"]
