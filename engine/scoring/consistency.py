"""Finding the character's face in each frame, sparsely: track between detections, embed only when needed.

Embedding is the expensive step (dlib: ~60-180 ms per face, holding the GIL), so the `full` protocol
does not embed every frame:

1. The detector runs every `detect_every` frames on a downscaled copy; boxes map back to full size.
2. Detections continue tracks by IoU. A face is embedded (on the full-size frame) when its track is new,
   when its box moved away from where it was last embedded, or when its embedding is older than
   `embed_every_s` (the character's track) / `reembed_others_s` (other faces).
3. The character is the face closest to the reference, not the largest.
4. Frames where the character's face was embedded, or where no face was found, are anchors. When two
   consecutive anchors disagree (face / no face, pass / fail), the frames between them are bisected
   with full analyses until the boundary is exact to one frame.
5. Frames in between get values interpolated from their neighbouring anchors (their `source` says so).

The `opens2v` protocol analyses only its sampled frames, with the largest face, as published.
"""

from __future__ import annotations

import bisect
import copy
import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.identity.types import Face, FaceAnalyzer, IdentityReference

from .media import FrameData
from .schema import FrameScore, ScoringOptions


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Observation:
    """What was measured on one analysed frame."""

    index: int
    time_s: float | None
    file: str | None
    n_faces: int
    face: Face | None = None  # the character's face, full-size coordinates
    face_index: int | None = None
    distance: float | None = None  # set when the character's face was embedded on this frame
    similarity: float | None = None
    embedded: bool = False

    @property
    def is_anchor(self) -> bool:
        return self.embedded or self.face is None

    def status(self, threshold: float) -> tuple[bool, bool | None]:
        return self.face is not None, (None if self.distance is None else self.distance < threshold)


@dataclass(order=True)
class Thumb:
    """A face crop kept for the contact sheet (ordered so that a max-heap on -score keeps the worst)."""

    neg_score: float
    media: int = field(compare=False)
    index: int = field(compare=False)
    time_s: float | None = field(compare=False)
    distance: float = field(compare=False)
    image: np.ndarray = field(compare=False, repr=False)


class WorstFrames:
    """Keeps face crops of the lowest-scoring embedded frames (bounded memory) for the contact sheet."""

    def __init__(self, keep: int = 64, size: int = 144):
        self.keep, self.size = keep, size
        self.media = 0
        self._heap: list[Thumb] = []  # min-heap on neg_score: root is the best of the kept worst

    def add(self, frame: np.ndarray, face: Face, index: int, time_s, score: float, distance: float) -> None:
        import cv2

        if len(self._heap) >= self.keep and -score <= self._heap[0].neg_score:
            return
        x0, y0, x1, y1 = face.box
        m = 0.35 * max(x1 - x0, y1 - y0)
        h, w = frame.shape[:2]
        cx0, cy0, cx1, cy1 = int(max(0, x0 - m)), int(max(0, y0 - m)), int(min(w, x1 + m)), int(min(h, y1 + m))
        if cx1 <= cx0 or cy1 <= cy0:
            return
        crop = frame[cy0:cy1, cx0:cx1]
        s = self.size / max(crop.shape[:2])
        crop = cv2.resize(
            crop, (max(1, int(crop.shape[1] * s)), max(1, int(crop.shape[0] * s))), interpolation=cv2.INTER_AREA
        )
        item = Thumb(-score, self.media, index, time_s, distance, crop)
        if len(self._heap) < self.keep:
            heapq.heappush(self._heap, item)
        else:
            heapq.heapreplace(self._heap, item)

    def pick(self, n: int = 12, min_gap: int = 12) -> list[Thumb]:
        """The `n` worst frames, at least `min_gap` frames apart within a media so the sheet shows variety."""
        chosen: list[Thumb] = []
        for t in sorted(self._heap, key=lambda t: (t.neg_score, t.media, t.index), reverse=True):
            if all(c.media != t.media or abs(c.index - t.index) >= min_gap for c in chosen):
                chosen.append(t)
            if len(chosen) == n:
                break
        return chosen


class _Analyser:
    """Detection on a downscaled frame + embedding at full size, against one reference."""

    def __init__(self, analyzer: FaceAnalyzer, reference: IdentityReference, options: ScoringOptions, protocol: str):
        self.analyzer, self.options, self.protocol = analyzer, options, protocol
        self.info = analyzer.info
        self.ref = np.asarray(reference.embedding, dtype=np.float32)
        self.n_detect = 0
        self.n_embed = 0
        self.collector: WorstFrames | None = None

    def _embed_fn(self):
        # The dlib analyzer runs its network in PyTorch itself (engine/identity/dlib_torch.py): same vectors, ~8x
        # faster, for character creation and reference photos as much as for scoring.
        return self.analyzer.embed

    def detect(self, fd: FrameData) -> list[Face]:
        small, s = fd.small(self.options.detect_size)
        faces = self.analyzer.detect(small, upsample=self.options.upsample)
        self.n_detect += 1
        if s == 1.0:
            return faces
        w, h = fd.size
        return [_scale_face(f, s, w, h) for f in faces]

    def embed(self, fd: FrameData, faces: list[Face]) -> None:
        if not faces:
            return
        full = fd.full()
        for f in faces:
            if f.extra.get("_rescaled") and f.aligned is not None:
                from engine.identity.geometry import norm_crop

                f.aligned = norm_crop(full, f.kps5)
        self._embed_fn()(full, faces)
        self.n_embed += 1

    def distance(self, emb: np.ndarray) -> float:
        return float(self.info.distance(self.ref, emb))

    def similarity(self, emb: np.ndarray) -> float:
        sim = float(self.info.similarity(self.ref, emb))
        return max(0.0, sim) if self.protocol == "opens2v" else sim

    def observe(self, fd: FrameData, faces: list[Face], face: Face | None, distance: float | None) -> Observation:
        ob = Observation(fd.index, fd.time_s, fd.file, len(faces))
        if face is not None:
            ob.face, ob.face_index = face, face.index
            if distance is not None:
                ob.distance, ob.embedded = distance, True
                ob.similarity = self.similarity(face.embedding)
                if self.collector is not None:
                    score = self.options.curve.score(distance, self.info.threshold)
                    self.collector.add(fd.full(), face, fd.index, fd.time_s, score, distance)
        return ob

    def analyse_best(self, fd: FrameData) -> Observation:
        """Detect, embed up to `max_faces` (largest first), and take the face closest to the reference."""
        faces = self.detect(fd)
        cands = sorted(faces, key=lambda f: -f.area)[: self.options.max_faces]
        self.embed(fd, cands)
        if not cands:
            return self.observe(fd, faces, None, None)
        dists = [self.distance(f.embedding) for f in cands]
        i = int(np.argmin(dists))
        return self.observe(fd, faces, cands[i], dists[i])

    def analyse_largest(self, fd: FrameData) -> Observation:
        """OpenS2V: the largest face only."""
        faces = self.detect(fd)
        if not faces:
            return self.observe(fd, faces, None, None)
        face = max(faces, key=lambda f: f.area)
        self.embed(fd, [face])
        return self.observe(fd, faces, face, self.distance(face.embedding))


def _scale_face(face: Face, s: float, w: int, h: int) -> Face:
    f = copy.copy(face)
    x0, y0, x1, y1 = face.box
    f.box = (max(0.0, x0 * s), max(0.0, y0 * s), min(float(w), x1 * s), min(float(h), y1 * s))
    f.landmarks = np.asarray(face.landmarks, dtype=np.float32) * s
    f.kps5 = np.asarray(face.kps5, dtype=np.float32) * s
    f.extra = dict(face.extra)
    if "raw_box" in f.extra:
        f.extra["raw_box"] = tuple(int(round(v * s)) for v in f.extra["raw_box"])
    f.extra["_rescaled"] = True
    return f


@dataclass
class _Track:
    id: int
    box: tuple[float, float, float, float]
    embedding: np.ndarray | None = None
    distance: float | None = None
    embed_box: tuple[float, float, float, float] | None = None
    embed_frame: int = -(10**9)


class FullScanner:
    """The `full` protocol over a stream of frames (see the module docstring)."""

    def __init__(self, core: _Analyser, fps: float | None):
        self.core, self.opts = core, core.options
        rate = fps or 24.0
        self.k = self.opts.detect_interval(fps)
        self.embed_every = max(1, int(round(self.opts.embed_every_s * rate)))
        self.reembed_others = max(1, int(round(self.opts.reembed_others_s * rate)))
        self.threshold = core.info.threshold
        self.tracks: list[_Track] = []
        self.char_track: int | None = None
        self._next_id = 0
        self.buffer: list[FrameData] = []
        self.obs: dict[int, Observation] = {}
        self.last_anchor: Observation | None = None
        self.last: FrameData | None = None
        self.n_frames = 0

    def feed(self, fd: FrameData) -> None:
        self.buffer.append(fd)
        self.last = fd
        self.n_frames = fd.index + 1
        if fd.index % self.k == 0:
            self._commit(self._track_step(fd))

    def finish(self) -> list[Observation]:
        """Analyse the last frame fully (so a clip's last face is always measured) and return observations."""
        if self.last is not None:
            ob = self.obs.get(self.last.index)
            if ob is None or not ob.is_anchor:
                self._commit(self.core.analyse_best(self.last))
        self.buffer = []
        return [self.obs[i] for i in sorted(self.obs)]

    def _commit(self, ob: Observation) -> None:
        self.obs[ob.index] = ob
        if not ob.is_anchor:
            return
        if self.last_anchor is not None and self.opts.refine:
            self._refine(self.last_anchor, ob)
        self.last_anchor = ob
        first = self.buffer[0].index if self.buffer else ob.index
        self.buffer = self.buffer[ob.index - first :]

    def _refine(self, a: Observation, b: Observation) -> None:
        if b.index - a.index <= 1 or a.status(self.threshold) == b.status(self.threshold):
            return
        mid = (a.index + b.index) // 2
        fd = self.buffer[mid - self.buffer[0].index]
        m = self.core.analyse_best(fd)
        self.obs[mid] = m
        self._refine(a, m)
        self._refine(m, b)

    def _track_step(self, fd: FrameData) -> Observation:
        core = self.core
        faces = core.detect(fd)
        cands = sorted(faces, key=lambda f: -f.area)[: self.opts.max_faces]
        pairs = sorted(
            ((iou(t.box, f.box), ti, fi) for ti, t in enumerate(self.tracks) for fi, f in enumerate(cands)),
            reverse=True,
        )
        used_t, match = set(), {}
        for v, ti, fi in pairs:
            if v < self.opts.track_iou:
                break
            if ti in used_t or fi in match:
                continue
            used_t.add(ti)
            match[fi] = self.tracks[ti]
        tracks, need = [], []
        for fi, f in enumerate(cands):
            t = match.get(fi)
            if t is None:
                t = _Track(self._next_id, f.box)
                self._next_id += 1
                stale = True
            else:
                every = self.embed_every if t.id == self.char_track else self.reembed_others
                stale = (
                    t.embedding is None
                    or iou(f.box, t.embed_box) < self.opts.reembed_iou
                    or fd.index - t.embed_frame >= every
                )
            t.box = f.box
            tracks.append(t)
            if stale:
                need.append(fi)
        core.embed(fd, [cands[fi] for fi in need])
        for fi in need:
            t = tracks[fi]
            t.embedding = cands[fi].embedding
            t.distance = core.distance(t.embedding)
            t.embed_box, t.embed_frame = cands[fi].box, fd.index
        self.tracks = tracks
        if not cands:
            self.char_track = None
            return core.observe(fd, faces, None, None)
        best = min(range(len(cands)), key=lambda fi: tracks[fi].distance)
        self.char_track = tracks[best].id
        fresh = best in need
        return core.observe(fd, faces, cands[best], tracks[best].distance if fresh else None)


def _lerp(a: float | None, b: float | None, w: float) -> float | None:
    if a is None or b is None:
        return a if b is None else b if a is None else None
    return a + (b - a) * w


def _geometry(face: Face) -> dict:
    width = face.width
    io = face.inter_ocular
    return dict(
        box=tuple(round(float(v), 2) for v in face.box),
        face_width_px=round(float(width), 2),
        yaw=round(float(face.yaw), 2),
        inter_ocular_px=round(io, 3),
        inter_ocular_norm=round(io / width, 5) if width > 0 else None,
    )


def build_frames(
    observations: Sequence[Observation],
    n_frames: int | None,
    *,
    threshold: float,
    options: ScoringOptions,
    fps: float | None,
) -> list[FrameScore]:
    """Per-frame records. With `n_frames`, every frame 0..n-1 gets one (interpolating between anchors);
    without, only the observed frames do (sampled protocols, image sets)."""
    curve = options.curve

    def record(i: int, src: str, n_faces: int, geo: dict | None, dist: float | None, sim: float | None, **kw):
        face = geo is not None and dist is not None
        return FrameScore(
            index=i,
            source=src,
            n_faces=n_faces,
            distance=round(dist, 6) if face else None,
            similarity=round(sim, 6) if face and sim is not None else None,
            score=round(curve.score(dist, threshold), 3) if face else None,
            passes=bool(dist < threshold) if face else None,
            **(geo or {}),
            **kw,
        )

    obs = {o.index: o for o in observations}
    if n_frames is None:
        out = []
        for o in observations:
            geo = _geometry(o.face) if o.face is not None else None
            out.append(
                record(
                    o.index,
                    "embedded" if o.embedded else "detected",
                    o.n_faces,
                    geo,
                    o.distance,
                    o.similarity,
                    time_s=o.time_s,
                    file=o.file,
                    face_index=o.face_index,
                )
            )
        return out

    anchors = sorted(i for i, o in obs.items() if o.is_anchor)
    analysed = sorted(obs)
    out = []
    for i in range(n_frames):
        o = obs.get(i)
        time_s = o.time_s if o is not None else (round(i / fps, 6) if fps else None)
        if o is not None and o.is_anchor:
            geo = _geometry(o.face) if o.face is not None else None
            out.append(
                record(
                    i,
                    "embedded" if o.embedded else "detected",
                    o.n_faces,
                    geo,
                    o.distance,
                    o.similarity,
                    time_s=time_s,
                    face_index=o.face_index,
                )
            )
            continue
        # Identity: between the neighbouring anchors.
        j = bisect.bisect_left(anchors, i)
        a = obs[anchors[j - 1]] if j > 0 else None
        b = obs[anchors[j]] if j < len(anchors) else None
        dist = sim = None
        if a is not None and b is not None and a.face is not None and b.face is not None:
            w = (i - a.index) / (b.index - a.index)
            dist, sim = _lerp(a.distance, b.distance, w), _lerp(a.similarity, b.similarity, w)
        else:
            near = [x for x in (a, b) if x is not None]
            near.sort(key=lambda x: abs(x.index - i))
            if o is not None:  # this frame has its own detection: take the nearest anchor that had a face
                near = [x for x in near if x.face is not None] or near
            if near and near[0].face is not None:
                dist, sim = near[0].distance, near[0].similarity
        # Geometry: own detection, else between the neighbouring analysed frames.
        if o is not None:
            geo = _geometry(o.face) if o.face is not None else None
            n_faces, src = o.n_faces, "detected"
        else:
            k = bisect.bisect_left(analysed, i)
            p = obs[analysed[k - 1]] if k > 0 else None
            q = obs[analysed[k]] if k < len(analysed) else None
            geo, n_faces, src = None, 0, "interpolated"
            if p is not None and q is not None and p.face is not None and q.face is not None:
                w = (i - p.index) / (q.index - p.index)
                gp, gq = _geometry(p.face), _geometry(q.face)
                geo = {key: _interp_value(gp[key], gq[key], w) for key in gp}
                n_faces = p.n_faces
            else:
                near = sorted([x for x in (p, q) if x is not None], key=lambda x: abs(x.index - i))
                if near and near[0].face is not None:
                    geo, n_faces = _geometry(near[0].face), near[0].n_faces
            if geo is None:
                dist = sim = None
        if dist is None:
            geo = None if o is None else geo
        out.append(
            record(
                i,
                src,
                n_faces if (geo is not None and dist is not None) else 0,
                geo,
                dist,
                sim,
                time_s=time_s,
                face_index=o.face_index if o is not None and dist is not None else None,
            )
        )
    return out


def _interp_value(a, b, w):
    if a is None or b is None:
        return a if b is None else b
    if isinstance(a, tuple):
        return tuple(round(x + (y - x) * w, 2) for x, y in zip(a, b))
    return round(a + (b - a) * w, 5)


def scan(
    frames: Iterable[FrameData],
    core: _Analyser,
    *,
    protocol: str,
    fps: float | None,
    sampled: set[int] | None = None,
    stream: bool = True,
) -> tuple[list[Observation], int]:
    """Run a protocol over frames; returns the observations and the number of frames seen.

    `stream=True` treats frames as a video (tracking, interpolation); otherwise every frame is analysed
    on its own (image sets).
    """
    if protocol == "opens2v":
        obs, n = [], 0
        for fd in frames:
            n = fd.index + 1
            if sampled is None or fd.index in sampled:
                obs.append(core.analyse_largest(fd))
        return obs, n
    if not stream:
        obs, n = [], 0
        for fd in frames:
            n = fd.index + 1
            obs.append(core.analyse_best(fd))
        return obs, n
    scanner = FullScanner(core, fps)
    for fd in frames:
        scanner.feed(fd)
    return scanner.finish(), scanner.n_frames
