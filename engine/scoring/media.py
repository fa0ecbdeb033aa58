"""Media inputs for scoring: sort paths into videos and image sets, decode frames lazily, hash files.

Videos are decoded with PyAV (ffmpeg's own threads, `thread_type="AUTO"`); a frame is converted to RGB
only when the scorer asks for it, either downscaled for the detector or at full size for the encoder,
so most frames of a long clip are never converted at all.
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


def _open(path: Path):
    import av

    if path.stat().st_size == 0:
        raise InputError(f"video {path} is empty (0 bytes): re-export or re-download it")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise InputError(f"cannot open video {path} ({_short(e)}): the file is damaged or not a video") from None
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
        if dur is None and container.duration:
            dur = container.duration / 1_000_000
        return VideoInfo(s.codec_context.width, s.codec_context.height, fps, n, dur)


def iter_video(path: str | os.PathLike, *, want=None, thread_type: str = "AUTO") -> Iterator[FrameData]:
    """Decode every frame in order. `want(index) -> bool` limits which frames are handed out (others are
    decoded but never converted). `thread_type` is ffmpeg's ("AUTO" = frame + slice threads, "NONE").
    Raises `InputError` when nothing decodes."""
    import av

    path = Path(path)
    container = _open(path)
    n = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = thread_type
        t0 = None
        fps = float(stream.average_rate) if stream.average_rate else None
        try:
            for frame in container.decode(stream):
                t = frame.time
                if t is not None and t0 is None:
                    t0 = t
                time_s = (t - t0) if t is not None else (n / fps if fps else None)
                if want is None or want(n):
                    yield FrameData(n, None if time_s is None else round(float(time_s), 6), av_frame=frame)
                n += 1
        except av.FFmpegError as e:
            if n == 0:
                raise InputError(f"cannot decode video {path} ({_short(e)}): the file is damaged") from None
            # A truncated tail: keep what decoded (the report's frame count says how much).
    finally:
        container.close()
    if n == 0:
        raise InputError(f"video {path} has no decodable frames: the file is empty or damaged")


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
) -> Iterator[FrameData]:
    """The `wanted` frames of a video, decoded in a child process (`python -m engine.scoring._decode`).

    The child starts right away (before the first frame is asked for), so it decodes while the caller
    hashes the file and analyses earlier samples. A separate process, not a thread: dlib's detector
    holds the GIL, and decoding every frame of a long clip costs more than analysing the 32 samples.
    `probe=False` skips the in-process open check when the caller has just probed the file.
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

    def __iter__(self) -> Iterator[FrameData]:
        return _read_decoded(self.proc, self.path)

    def close(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _read_decoded(proc, path) -> Iterator[FrameData]:
    import json

    try:
        while True:
            line = proc.stdout.readline()
            if not line:
                break
            head = json.loads(line)
            if "error" in head:
                raise InputError(head["error"])
            shape = tuple(head["shape"])
            data = proc.stdout.read(int(np.prod(shape)))
            if len(data) != int(np.prod(shape)):
                break
            yield FrameData(head["index"], head["time_s"], array=np.frombuffer(data, np.uint8).reshape(shape))
        if proc.wait() != 0:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise InputError(
                f"cannot decode video {path} ({err[-1] if err else 'decoder failed'}): the file is damaged"
            )
    finally:
        _Decoded(proc, path).close()
