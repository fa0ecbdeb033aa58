"""Media inputs for scoring: sort paths into videos and image sets, decode frames lazily, hash files.

Videos are decoded with PyAV (ffmpeg's own threads, `thread_type="AUTO"`); a frame is converted to RGB
only when the scorer asks for it, either downscaled for the detector or at full size for the encoder,
so most frames of a long clip are never converted at all.

Decoding goes packet by packet, so one corrupt packet costs its frames, not the rest of the clip; what went
wrong is counted in a `DecodeLog`, which the scorer turns into the report's `damage` record.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine._core.errors import InputError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".gif"}


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


@dataclass
class MediaItem:
    """One thing to score: a video file, a single image, or a folder's images in name order."""

    kind: str  # "video" | "image" | "images"
    path: Path
    files: list[Path] = field(default_factory=list)  # images of an image set
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def collect_media(paths) -> list[MediaItem]:
    """Expand MEDIA arguments: a folder becomes one image set (its images) plus one item per video in it.

    Files in a folder that are neither images nor videos are skipped and listed; a missing path or an
    explicit file of an unknown type is an `InputError`.
    """
    items: list[MediaItem] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise InputError(f"media not found: {p}: check the path")
        if p.is_dir():
            images, skipped = [], []
            for f in sorted(p.iterdir(), key=_natural_key):
                if f.name.startswith(".") or f.is_dir():
                    continue
                ext = f.suffix.lower()
                if ext in IMAGE_EXTS:
                    images.append(f)
                elif ext in VIDEO_EXTS:
                    items.append(MediaItem("video", f))
                else:
                    skipped.append((str(f), "not an image or video"))
            if images or skipped:
                items.append(MediaItem("images", p, images, skipped))
            continue
        ext = p.suffix.lower()
        if ext in VIDEO_EXTS:
            items.append(MediaItem("video", p))
        elif ext in IMAGE_EXTS:
            items.append(MediaItem("image", p, [p]))
        else:
            raise InputError(
                f"unsupported media type '{p.suffix or p.name}' for {p}: give images "
                f"({', '.join(sorted(IMAGE_EXTS))}), videos ({', '.join(sorted(VIDEO_EXTS))}) or folders"
            )
    if not items:
        raise InputError("nothing to score: the folders given hold no images or videos")
    return items


class FrameData:
    """A frame that converts itself to RGB on demand (full size or downscaled), caching the result."""

    __slots__ = ("_av", "_full", "_small", "file", "index", "time_s")

    def __init__(self, index: int, time_s: float | None, *, av_frame=None, array: np.ndarray | None = None, file=None):
        self.index, self.time_s, self.file = index, time_s, file
        self._av, self._full, self._small = av_frame, array, None

    @property
    def size(self) -> tuple[int, int]:
        if self._full is not None:
            return self._full.shape[1], self._full.shape[0]
        return self._av.width, self._av.height

    def full(self) -> np.ndarray:
        if self._full is None:
            self._full = np.ascontiguousarray(self._av.to_ndarray(format="rgb24"))
        return self._full

    def small(self, longest: int) -> tuple[np.ndarray, float]:
        """The frame with its longest side at most `longest` (0 = full), and the factor full/small."""
        w, h = self.size
        if longest <= 0 or max(w, h) <= longest:
            return self.full(), 1.0
        if self._small is None or max(self._small.shape[:2]) != longest:
            s = longest / max(w, h)
            sw, sh = max(2, round(w * s)), max(2, round(h * s))
            if self._full is None:
                arr = self._av.reformat(width=sw, height=sh, format="rgb24", interpolation="AREA").to_ndarray()
            else:
                import cv2

                arr = cv2.resize(self._full, (sw, sh), interpolation=cv2.INTER_AREA)
            self._small = np.ascontiguousarray(arr)
        return self._small, max(w, h) / max(self._small.shape[:2])


@dataclass
class VideoInfo:
    width: int
    height: int
    fps: float | None
    frames: int  # 0 when the container does not say
    duration_s: float | None

    def expected_frames(self) -> tuple[int | None, str | None]:
        """How many frames the file should decode to, and from what: "duration" (x fps) or "frame_count".

        Duration first: an MP4 whose edit list trims a pre-roll counts the trimmed samples in its frame count
        but not in its duration, and decoders drop those frames."""
        if self.duration_s and self.fps:
            return int(round(self.duration_s * self.fps)), "duration"
        if self.frames > 0:
            return self.frames, "frame_count"
        return None, None


MAX_DECODE_MESSAGES = 5


@dataclass
class DecodeLog:
    """What happened while decoding one video: frames out, packets that failed, frames flagged corrupt.

    Filled by `iter_video` (in this process, or in the decoder child, which sends it back at the end);
    only the first few messages are kept, so a badly broken file cannot grow the report."""

    frames: int = 0
    errors: int = 0
    corrupt_frames: int = 0
    messages: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.messages) < MAX_DECODE_MESSAGES:
            self.messages.append(message[:160])

    def as_dict(self) -> dict:
        return {
            "frames": self.frames,
            "errors": self.errors,
            "corrupt_frames": self.corrupt_frames,
            "messages": self.messages,
        }

    def update(self, d: dict) -> None:
        self.frames, self.errors = int(d["frames"]), int(d["errors"])
        self.corrupt_frames, self.messages = int(d["corrupt_frames"]), list(d["messages"])[:MAX_DECODE_MESSAGES]


def _open(path: Path):
    import av

    if path.stat().st_size == 0:
        raise InputError(f"video {path} is empty (0 bytes): re-export or re-download it")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise InputError(f"cannot open video {path} ({_av_message(e)}): the file is damaged or not a video") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path} has no video stream: give a video file (MP4, MOV, WebM or GIF)")
    return container


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def probe_video(path: str | os.PathLike, *, count: bool = False) -> VideoInfo:
    """Size, frame rate and frame count; with `count=True`, counts packets when the container does not say."""
    import av

    path = Path(path)
    with _open(path) as container:
        s = container.streams.video[0]
        fps = float(s.average_rate) if s.average_rate else (float(s.guessed_rate) if s.guessed_rate else None)
        n = int(s.frames or 0)
        if n <= 0 and count:
            try:
                n = sum(1 for pkt in container.demux(s) if pkt.size)
            except av.FFmpegError:
                n = 0
        dur = float(s.duration * s.time_base) if s.duration and s.time_base else None
        if dur is None:
            dur = _tag_duration(s.metadata.get("DURATION") or s.metadata.get("duration"))
        if dur is None and container.duration:
            dur = container.duration / 1_000_000
        return VideoInfo(s.codec_context.width, s.codec_context.height, fps, n, dur)


def _tag_duration(tag: str | None) -> float | None:
    """Matroska/WebM keep a track's duration in a `DURATION` tag ("00:00:01.250000000"); the container's
    duration is the longest track's, which may be the audio."""
    try:
        h, m, sec = (tag or "").split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return None


def iter_video(
    path: str | os.PathLike, *, want=None, thread_type: str = "AUTO", log: DecodeLog | None = None
) -> Iterator[FrameData]:
    """Decode every frame in order. `want(index) -> bool` limits which frames are handed out (others are
    decoded but never converted). `thread_type` is ffmpeg's ("AUTO" = frame + slice threads, "NONE").

    Packets are decoded one by one: a packet ffmpeg rejects is counted in `log` (with its time) and decoding
    goes on with the next, so a corrupt middle loses only the frames that depend on it. A demuxer error
    (a truncated or garbled container) ends the stream; the frames still inside the decoder are flushed
    out. Raises `InputError` when nothing decodes."""
    import av

    path = Path(path)
    log = log if log is not None else DecodeLog()
    container = _open(path)
    n = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = thread_type
        t0 = None
        fps = float(stream.average_rate) if stream.average_rate else None
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError as e:  # the demuxer cannot go on: flush what the decoder still holds
                log.error(f"container: {_av_message(e)}")
                packet = None
            try:
                frames = packet.decode() if packet is not None else stream.codec_context.decode(None)
            except av.FFmpegError as e:
                log.error(f"{_at(packet)}: {_av_message(e)}")
                frames = ()
            for frame in frames:
                if frame.is_corrupt:
                    log.corrupt_frames += 1
                t = frame.time
                if t is not None and t0 is None:
                    t0 = t
                time_s = (t - t0) if t is not None else (n / fps if fps else None)
                if want is None or want(n):
                    yield FrameData(n, None if time_s is None else round(float(time_s), 6), av_frame=frame)
                n += 1
                log.frames = n
            if packet is None:
                break
    finally:
        container.close()
    if n == 0:
        why = f" ({log.messages[0]})" if log.messages else ""
        raise InputError(f"video {path} has no decodable frames{why}: the file is empty or damaged")


def _av_message(e: Exception) -> str:
    return getattr(e, "strerror", None) or _short(e)


def _at(packet) -> str:
    if packet is None:
        return "flush"
    if packet.pts is not None and packet.time_base:
        return f"packet at {float(packet.pts * packet.time_base):.2f}s"
    return f"packet at byte {packet.pos}" if packet.pos is not None and packet.pos >= 0 else "packet"


def iter_images(files: list[Path], skipped: list[tuple[str, str]]) -> Iterator[FrameData]:
    """Load each image; unreadable ones are added to `skipped` instead of stopping the run."""
    from engine.identity.images import load_image

    i = 0
    for f in files:
        try:
            arr = load_image(f)
        except InputError as e:
            skipped.append((str(f), str(e)))
            continue
        yield FrameData(i, None, array=arr, file=str(f))
        i += 1


def iter_arrays(frames, fps: float | None) -> Iterator[FrameData]:
    """Wrap in-memory frames (numpy arrays or PIL images) from a renderer."""
    from engine.identity.images import to_rgb_array

    for i, fr in enumerate(frames):
        yield FrameData(i, round(i / fps, 6) if fps else None, array=to_rgb_array(fr))


def iter_video_sampled(
    path: str | os.PathLike, wanted: list[int], *, thread_type: str = "AUTO", probe: bool = True
) -> _Decoded:
    """The `wanted` frames of a video, decoded in a child process (`python -m engine.scoring._decode`).

    The child starts right away (before the first frame is asked for), so it decodes while the caller
    hashes the file and analyses earlier samples. A separate process, not a thread: dlib's detector
    holds the GIL, and decoding every frame of a long clip costs more than analysing the 32 samples.
    `probe=False` skips the in-process open check when the caller has just probed the file.
    The child decodes every frame, so once iterated, `.log` says what it decoded and what failed.
    """
    import subprocess
    import sys

    if probe:
        probe_video(path)  # errors for empty / unreadable files come from here, in this process
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.scoring._decode", str(path), ",".join(map(str, wanted)), thread_type],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return _Decoded(proc, path)


class _Decoded:
    """Frames read from the decoder child; `close()` (also on errors and at the end) stops the child."""

    def __init__(self, proc, path):
        self.proc, self.path = proc, path
        self.log = DecodeLog()

    def __iter__(self) -> Iterator[FrameData]:
        return _read_decoded(self)

    def close(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _read_decoded(dec: _Decoded) -> Iterator[FrameData]:
    """Frames from the child's stdout: a JSON line per frame (then its raw RGB), an `error` line when
    nothing decodes, and a `done` line with the child's `DecodeLog`. A child that dies part-way (ffmpeg
    crashing on a broken file) after some frames is logged as a decode error, not raised."""
    import json

    proc, path, log = dec.proc, dec.path, dec.log
    got, done = 0, False
    try:
        while True:
            line = proc.stdout.readline()
            if not line:
                break
            head = json.loads(line)
            if "error" in head:
                raise InputError(head["error"])
            if "done" in head:
                log.update(head["done"])
                done = True
                break
            shape = tuple(head["shape"])
            data = proc.stdout.read(int(np.prod(shape)))
            if len(data) != int(np.prod(shape)):
                break
            got += 1
            yield FrameData(head["index"], head["time_s"], array=np.frombuffer(data, np.uint8).reshape(shape))
        code = proc.wait()
        if not done or code != 0:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            why = err[-1] if err else f"decoder exited with code {code}"
            if got == 0 and not done:
                raise InputError(f"cannot decode video {path} ({why[:160]}): the file is damaged")
            log.error(f"decoder process ended early: {why}")
    finally:
        dec.close()
