"""The one scoring entry point used by `flx score`, the stills/clip/sequence pipelines and the demo.

`score_media` takes files; `score_frames` takes frames a renderer already holds in memory;
`score_sequence` adds seams and clip agreement for consecutive clips. All return a `ScoreReport`.

A file that decodes only in part is scored on what decoded and carries a `damage` record saying so; a file
that cannot be read at all is listed with the reason while the other media are scored.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from engine._core.errors import InputError
from engine.identity.types import FaceAnalyzer, IdentityReference
from engine.models.hashing import sha256_file

from .consistency import Observation, WorstFrames, _Analyser, build_frames, scan
from .media import (
    DecodeLog,
    FrameData,
    MediaItem,
    collect_media,
    iter_arrays,
    iter_images,
    iter_video,
    iter_video_sampled,
    probe_video,
)
from .metrics import min_swap_len, summarize, video_damage
from .schema import (
    EncoderRecord,
    MediaDamage,
    MediaReport,
    OverallSummary,
    Protocol,
    ReferenceRecord,
    Sampling,
    ScoreReport,
    ScoringOptions,
    Seam,
    SequenceReport,
    SkippedFile,
)


def check_reference(reference: IdentityReference, analyzer: FaceAnalyzer) -> None:
    """Refuse a reference made with another encoder or another model file (its distances would be meaningless)."""
    info = analyzer.info
    emb = np.asarray(reference.embedding)
    if reference.encoder_id != info.encoder_id or emb.size != info.dim:
        raise InputError(
            f"character '{reference.name}' has no {info.encoder_id} embedding (its reference is "
            f"{reference.encoder_id}, {emb.size}-d): run `flx character reembed {reference.name} "
            f"--encoder {info.encoder_id}` or score with --encoder {reference.encoder_id}"
        )
    if reference.model_sha256 is None or (
        info.model_sha256 is not None and reference.model_sha256 != info.model_sha256
    ):
        made = reference.model_sha256[:12] + "…" if reference.model_sha256 else "an unrecorded model file"
        raise InputError(
            f"the reference for '{reference.name}' was made by {made}, not by this {info.encoder_id} model "
            f"({(info.model_sha256 or '?')[:12]}…): run `flx character reembed {reference.name} --encoder "
            f"{info.encoder_id}`"
        )
    if not np.isfinite(emb).all() or not np.any(emb):
        raise InputError(f"the reference for '{reference.name}' holds NaN, infinite or all-zero values: re-create it")


def opens2v_indices(n_frames: int, count: int = 32) -> list[int]:
    """OpenS2V/ConsisID sampling: `count` uniformly spaced frames, np.linspace(0, N-1, count) rounded.

    Duplicates (clips shorter than `count` frames) are removed, so each frame is scored once.
    """
    if n_frames <= 0:
        return []
    return sorted({int(v) for v in np.round(np.linspace(0, n_frames - 1, count))})


def _prefetch(it: Iterator[FrameData], depth: int = 6) -> Iterator[FrameData]:
    """Run the decoder in a thread so decoding overlaps detection/embedding (both are mostly native code)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def worker():
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer thread and re-raised there
            q.put(e)

    th = threading.Thread(target=worker, name="flx-decode", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while th.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(0.05)


def _embeddings(obs: Sequence[Observation]) -> tuple[list | None, list | None, list | None]:
    vecs = [o.face.embedding for o in obs if o.embedded and o.face is not None and o.face.embedding is not None]
    if not vecs:
        return None, None, None
    as_list = lambda v: [float(x) for x in np.asarray(v, dtype=np.float32)]
    return as_list(np.mean(np.stack(vecs), axis=0)), as_list(vecs[0]), as_list(vecs[-1])


def _media_report(
    item_kind: str,
    path: str | None,
    sha: str | None,
    obs: list[Observation],
    n_seen: int,
    core: _Analyser,
    protocol: str,
    options: ScoringOptions,
    *,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    duration: float | None = None,
    indices: list[int] | None = None,
    skipped: list[tuple[str, str]] = (),
    damage: MediaDamage | None = None,
) -> MediaReport:
    timed = item_kind in ("video", "frames")
    per_frame = timed and protocol == "full"
    frames = build_frames(obs, n_seen if per_frame else None, threshold=core.info.threshold, options=options, fps=fps)
    min_len = min_swap_len(fps if timed else None, options.min_swap_s, options.min_swap_frames)
    summary = summarize(
        frames,
        frames_total=n_seen,
        frames_analysed=core.n_detect,
        frames_embedded=sum(1 for o in obs if o.embedded),
        min_len=min_len,
        fps=fps if timed else None,
        protocol=protocol,
    )
    mean, first, last = _embeddings(obs)
    return MediaReport(
        path=path,
        kind=item_kind,
        sha256=sha,
        width=size[0] if size else None,
        height=size[1] if size else None,
        fps=round(fps, 6) if fps else None,
        duration_s=round(duration, 6) if duration else None,
        sampling=Sampling(
            protocol=protocol,
            frames_total=n_seen,
            detect_every=options.detect_interval(fps) if per_frame else None,
            detect_size=options.detect_size,
            frame_indices=indices if protocol == "opens2v" else None,
        ),
        summary=summary,
        frames=frames,
        skipped=[SkippedFile(path=p, reason=r) for p, r in skipped],
        damage=damage,
        mean_embedding=mean,
        first_embedding=first,
        last_embedding=last,
    )


def _score_item(item: MediaItem, core: _Analyser, protocol: str, options: ScoringOptions) -> MediaReport:
    if item.kind == "video":
        info = probe_video(item.path, count=protocol == "opens2v")
        indices = opens2v_indices(info.frames, options.opens2v_frames) if protocol == "opens2v" else None
        wanted = set(indices) if indices is not None else None
        if wanted is not None:
            decoded = iter_video_sampled(item.path, indices, probe=False)  # the decoder starts now...
            try:
                sha = sha256_file(item.path)  # ...and runs while the file is hashed
            except BaseException:
                decoded.close()
                raise
            frames, log = decoded, decoded.log
        else:
            sha = sha256_file(item.path)
            log = DecodeLog()
            frames = _prefetch(iter_video(item.path, log=log))
        obs, n = scan(frames, core, protocol=protocol, fps=info.fps, sampled=wanted)
        duration = info.duration_s or (n / info.fps if info.fps else None)
        expected, expected_from = info.expected_frames()
        damage = video_damage(
            expected=expected,
            expected_from=expected_from,
            decoded=log.frames,
            errors=log.errors,
            corrupt=log.corrupt_frames,
            messages=log.messages,
        )
        return _media_report(
            "video",
            str(item.path),
            sha,
            obs,
            max(n, info.frames if protocol == "opens2v" else n),
            core,
            protocol,
            options,
            fps=info.fps,
            size=(info.width, info.height),
            duration=duration,
            indices=indices,
            damage=damage,
        )
    skipped = list(item.skipped)
    files = item.files
    obs, n = scan(iter_images(files, skipped), core, protocol=protocol, fps=None, stream=False)
    failed = skipped[len(item.skipped) :]  # images that did not load (iter_images appends them)
    if item.kind == "image" and failed:
        raise InputError(failed[0][1])
    if files and len(failed) == len(files):
        raise InputError(f"none of the {len(files)} images in {item.path} could be read ({failed[0][1]})")
    good = [f for f in files if str(f) not in {p for p, _ in failed}]
    if item.kind == "image":
        sha = sha256_file(item.path)
    else:
        h = hashlib.sha256()
        for f in good:
            h.update(f"{f.name}:{sha256_file(f)}\n".encode())
        sha = h.hexdigest()
    damage = MediaDamage(
        damaged=bool(failed),
        frames_expected=len(files),
        expected_from="files",
        frames_decoded=len(files) - len(failed),
        decode_errors=len(failed),
        errors=[f"{Path(p).name}: {r}"[:160] for p, r in failed[:5]],
    )
    return _media_report(
        item.kind, str(item.path), sha, obs, n, core, protocol, options, skipped=skipped, damage=damage
    )


def _unreadable(item: MediaItem, reason: str, protocol: str, options: ScoringOptions) -> MediaReport:
    """The report entry of a file nothing could be read from: no frames, a null score, the reason."""
    expected = 1 if item.kind == "image" else (len(item.files) if item.kind == "images" else None)
    return MediaReport(
        path=str(item.path),
        kind=item.kind,
        sampling=Sampling(protocol=protocol, frames_total=0, detect_size=options.detect_size),
        summary=summarize(
            [], frames_total=0, frames_analysed=0, frames_embedded=0, min_len=1, fps=None, protocol=protocol
        ).model_copy(update={"message": reason}),
        frames=[],
        skipped=[SkippedFile(path=p, reason=r) for p, r in item.skipped],
        damage=MediaDamage(
            damaged=True,
            frames_expected=expected,
            expected_from="files" if expected is not None else None,
            unreadable=reason,
        ),
    )


def _report(
    reports: list[MediaReport],
    reference: IdentityReference,
    analyzer: FaceAnalyzer,
    protocol: str,
    options: ScoringOptions,
    *,
    sequence: bool,
    reference_source: str,
) -> ScoreReport:
    import engine

    info = analyzer.info
    scored = [r.summary for r in reports]

    def mean(vals):
        vals = [v for v in vals if v is not None]
        return round(float(np.mean(vals)), 4) if vals else None

    overall = OverallSummary(
        media_count=len(reports),
        score=mean([s.score for s in scored]),
        facesim=mean([s.facesim for s in scored]),
        detection_rate=mean([s.detection_rate for s in scored]),
        pass_rate=mean([s.pass_rate for s in scored]),
        swaps=sum(len(s.swaps) for s in scored),
        damaged_media=sum(1 for r in reports if r.damage is not None and r.damage.damaged),
    )
    return ScoreReport(
        engine_version=engine.__version__,
        created_at=datetime.now(UTC).replace(microsecond=0),
        protocol=protocol,
        encoder=EncoderRecord(
            encoder_id=info.encoder_id,
            dim=info.dim,
            metric=info.metric,
            threshold=info.threshold,
            model_sha256=info.model_sha256,
        ),
        reference=ReferenceRecord(
            character_id=reference.character_id,
            version=reference.version,
            name=reference.name,
            encoder_id=reference.encoder_id,
            source=reference_source,
        ),
        options=options,
        media=reports,
        sequence=sequence_report(reports, analyzer) if sequence else None,
        overall=overall,
    )


def sequence_report(reports: Sequence[MediaReport], analyzer: FaceAnalyzer) -> SequenceReport:
    """Seams (last face of clip k vs first face of clip k+1) and distances between clip mean embeddings."""
    info = analyzer.info
    seams = []
    for k in range(len(reports) - 1):
        a, b = reports[k].last_embedding, reports[k + 1].first_embedding
        if a is None or b is None:
            seams.append(Seam(from_clip=k, to_clip=k + 1))
            continue
        d = info.distance(np.array(a), np.array(b))
        seams.append(
            Seam(
                from_clip=k,
                to_clip=k + 1,
                distance=round(d, 6),
                similarity=round(info.similarity(np.array(a), np.array(b)), 6),
                passes=bool(d < info.threshold),
            )
        )
    n = len(reports)
    mat: list[list[float | None]] = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            ei, ej = reports[i].mean_embedding, reports[j].mean_embedding
            if ei is not None and ej is not None:
                mat[i][j] = 0.0 if i == j else round(info.distance(np.array(ei), np.array(ej)), 6)
    offdiag = [mat[i][j] for i in range(n) for j in range(n) if i != j and mat[i][j] is not None]
    dists = [(s.distance, i) for i, s in enumerate(seams) if s.distance is not None]
    return SequenceReport(
        seams=seams,
        clip_scores=[r.summary.score for r in reports],
        clip_distances=mat,
        max_clip_distance=max(offdiag) if offdiag else None,
        worst_seam=max(dists)[1] if dists else None,
    )


def score_media(
    paths: Sequence[str | os.PathLike],
    reference: IdentityReference,
    analyzer: FaceAnalyzer,
    protocol: Protocol = "full",
    options: ScoringOptions | None = None,
    *,
    sequence: bool = False,
    collector: WorstFrames | None = None,
    reference_source: str = "",
) -> ScoreReport:
    """Score images, image folders and videos against a character's reference embedding.

    Args:
        paths: image files, folders (their images form one set; videos inside are scored one by one) or videos.
        reference (`IdentityReference`): the character, embedded with the same encoder as `analyzer`.
        analyzer (`FaceAnalyzer`): detector + encoder (e.g. `get_analyzer()`).
        protocol (`str`, *optional*, defaults to `"full"`): `"full"` (every frame, tracked) or `"opens2v"`
            (32 uniformly spaced frames, largest face, clamped cosine: the published protocol).
        options (`ScoringOptions`, *optional*): sampling, tracking and score-curve settings.
        sequence (`bool`, *optional*, defaults to `False`): treat the media as consecutive clips (adds seams).
        collector (`WorstFrames`, *optional*): receives face crops of the worst frames (for `write_contact_sheet`).

    A file that cannot be read (not a video, nothing decodes, an image that does not load) is listed in the
    report with the reason (`damage.unreadable`) and the other media are scored; a file that decodes in part
    is scored on what decoded, with `damage.damaged` set. `metrics.gate` turns that into pass/fail.

    Raises:
        `InputError`: missing media, nothing at all could be read, or a reference made with another encoder.

    Examples:
        ```py
        >>> report = score_media(["clip.mp4"], reference, get_analyzer())
        >>> report.media[0].summary.score
        93.5
        ```
    """
    options = options or ScoringOptions()
    if protocol not in ("full", "opens2v"):
        raise InputError(f"unknown protocol '{protocol}': use full or opens2v")
    check_reference(reference, analyzer)
    items = collect_media(paths)
    reports = []
    for i, item in enumerate(items):
        core = _Analyser(analyzer, reference, options, protocol)
        if collector is not None:
            collector.media = i
            core.collector = collector
        try:
            reports.append(_score_item(item, core, protocol, options))
        except InputError as e:
            reports.append(_unreadable(item, str(e), protocol, options))
        except OSError as e:  # e.g. permission denied while hashing
            reports.append(_unreadable(item, f"cannot read {item.path}: {e.strerror or e}", protocol, options))
    unread = [r for r in reports if r.damage is not None and r.damage.unreadable]
    if len(unread) == len(reports):
        if len(unread) == 1:
            raise InputError(unread[0].damage.unreadable)
        raise InputError(
            f"none of the {len(unread)} media could be read (first: {unread[0].damage.unreadable[:200]}): "
            "check the files are images or videos that play"
        )
    return _report(
        reports, reference, analyzer, protocol, options, sequence=sequence, reference_source=reference_source
    )


def score_sequence(
    clip_paths: Sequence[str | os.PathLike],
    reference: IdentityReference,
    analyzer: FaceAnalyzer,
    protocol: Protocol = "full",
    options: ScoringOptions | None = None,
    **kwargs,
) -> ScoreReport:
    """`score_media` over consecutive clips, with seams (clip k's last face vs clip k+1's first) and agreement."""
    return score_media(clip_paths, reference, analyzer, protocol, options, sequence=True, **kwargs)


def score_frames(
    frames: Iterable,
    fps: float | None,
    reference: IdentityReference,
    analyzer: FaceAnalyzer,
    protocol: Protocol = "full",
    options: ScoringOptions | None = None,
    *,
    collector: WorstFrames | None = None,
    reference_source: str = "",
) -> ScoreReport:
    """Score frames a renderer holds in memory (RGB uint8 arrays or PIL images), e.g. right after a clip renders.

    With `fps=None` the frames are treated as separate stills (each analysed on its own, no tracking).
    """
    options = options or ScoringOptions()
    check_reference(reference, analyzer)
    core = _Analyser(analyzer, reference, options, protocol)
    if collector is not None:
        collector.media = 0
        core.collector = collector
    indices = None
    wanted = None
    if protocol == "opens2v":
        frames = list(frames)
        indices = opens2v_indices(len(frames), options.opens2v_frames)
        wanted = set(indices)
    stream = iter_arrays(frames, fps)
    first: list[FrameData] = []

    def remember(it):
        for fd in it:
            if not first:
                first.append(fd)
            yield fd

    obs, n = scan(remember(stream), core, protocol=protocol, fps=fps, sampled=wanted, stream=fps is not None)
    size = first[0].size if first else None
    rep = _media_report(
        "frames" if fps is not None else "images",
        None,
        None,
        obs,
        n,
        core,
        protocol,
        options,
        fps=fps,
        size=size,
        duration=(n / fps if fps else None),
        indices=indices,
    )
    return _report([rep], reference, analyzer, protocol, options, sequence=False, reference_source=reference_source)
