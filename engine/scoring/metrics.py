"""Summary numbers from per-frame records: rates, similarity statistics, the score, drift and swaps; whether a
file decoded whole; and `gate`, the pass/fail decision on a report.

Pure functions over `FrameScore` lists and reports (no models, no I/O), so every formula here is testable on
its own and documented in docs/scoring.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from engine._core.errors import DamagedMedia, EngineError, InputError, ScoreBelowMinimum

from .schema import Drift, FrameScore, MediaDamage, MediaSummary, ScoreReport, Segment


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


def _slope(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 2 or float(np.ptp(x)) == 0.0:
        return None
    return float(np.polyfit(x, y, 1)[0])


def min_swap_len(fps: float | None, min_swap_s: float, min_swap_frames: int) -> int:
    """Shortest run (frames) reported as a swap: max(min_swap_frames, ceil(min_swap_s * fps)); 1 without fps."""
    if not fps:
        return 1
    return max(int(min_swap_frames), int(math.ceil(min_swap_s * fps - 1e-9)))


def swap_segments(frames: Sequence[FrameScore], min_len: int, fps: float | None = None) -> list[Segment]:
    """Runs of frames whose character face fails the threshold, flicker suppressed.

    1. A frame is "failing" when it has a face and `passes` is False; frames without a face end a run.
    2. Failing runs separated by fewer than `min_len` passing frames are merged (a short match inside a
       swap does not split it).
    3. Runs shorter than `min_len` frames are dropped (a short mismatch is flicker, not a swap).
    """
    runs: list[list[int]] = []
    start = prev = None
    for f in frames:
        failing = f.passes is False
        if failing and start is not None and f.index == prev + 1:
            prev = f.index
            continue
        if start is not None:
            runs.append([start, prev])
            start = prev = None
        if failing:
            start = prev = f.index
    if start is not None:
        runs.append([start, prev])
    by_index = {f.index: f for f in frames}
    merged: list[list[int]] = []
    for run in runs:
        if merged:
            gap = range(merged[-1][1] + 1, run[0])
            if len(gap) < min_len and all(by_index.get(i) is not None and by_index[i].n_faces > 0 for i in gap):
                merged[-1][1] = run[1]
                continue
        merged.append(run)
    out = []
    for s, e in merged:
        if e - s + 1 < min_len:
            continue
        ds = [by_index[i].distance for i in range(s, e + 1) if i in by_index and by_index[i].distance is not None]
        t0 = by_index[s].time_s
        te = by_index[e].time_s
        if te is not None and fps:
            te = te + 1.0 / fps
        out.append(
            Segment(
                start_frame=s,
                end_frame=e,
                start_s=_r(t0, 4),
                end_s=_r(te, 4),
                n_frames=e - s + 1,
                mean_distance=_r(float(np.mean(ds))) if ds else None,
            )
        )
    return out


def drift(frames: Sequence[FrameScore]) -> Drift:
    """Least-squares trends of similarity, distance and eye spacing over time (and over frame index)."""
    fs = [f for f in frames if f.distance is not None]
    if len(fs) < 2:
        return Drift()
    idx = np.array([f.index for f in fs], dtype=np.float64)
    dist = np.array([f.distance for f in fs], dtype=np.float64)
    sim = np.array([f.similarity for f in fs], dtype=np.float64)
    timed = all(f.time_s is not None for f in fs)
    t = np.array([f.time_s for f in fs], dtype=np.float64) if timed else None
    x = t if timed else idx
    out = dict(
        similarity_per_frame=_r(_slope(idx, sim), 8),
        distance_per_frame=_r(_slope(idx, dist), 8),
        similarity_per_s=_r(_slope(t, sim), 8) if timed else None,
        distance_per_s=_r(_slope(t, dist), 8) if timed else None,
    )
    eye = [(xi, f.inter_ocular_px, f.inter_ocular_norm) for xi, f in zip(x, fs) if f.inter_ocular_px]
    if len(eye) >= 2:
        ex = np.array([e[0] for e in eye])
        ey = np.array([e[1] for e in eye])
        en = np.array([e[2] for e in eye])
        if float(np.ptp(ex)) > 0:
            a, b = np.polyfit(ex, ey, 1)
            start, end = b + a * ex.min(), b + a * ex.max()
            an, bn = np.polyfit(ex, en, 1)
            ns, ne = bn + an * ex.min(), bn + an * ex.max()
            out.update(
                eye_spacing_start_px=_r(start, 3),
                eye_spacing_end_px=_r(end, 3),
                eye_spacing_change_px=_r(end - start, 3),
                eye_spacing_change_pct=_r(100.0 * (end - start) / start, 3) if start > 0 else None,
                eye_spacing_norm_change_pct=_r(100.0 * (ne - ns) / ns, 3) if ns > 0 else None,
            )
    return Drift(**out)


def summarize(
    frames: Sequence[FrameScore],
    *,
    frames_total: int,
    frames_analysed: int,
    frames_embedded: int,
    min_len: int,
    fps: float | None,
    protocol: str,
) -> MediaSummary:
    """Media-level numbers. The score is the mean per-frame score over frames with a face (docs/scoring.md)."""
    with_face = [f for f in frames if f.distance is not None]
    n = len(frames)
    base = dict(
        frames_total=frames_total,
        frames_scored=n,
        frames_analysed=frames_analysed,
        frames_embedded=frames_embedded,
        frames_with_face=len(with_face),
        detection_rate=_r(len(with_face) / n if n else 0.0, 4),
    )
    if not with_face:
        msg = "no face found in any frame" if n else "no frames to score"
        return MediaSummary(**base, message=msg + ": score is null (check the media shows the character's face)")
    sims = np.array([f.similarity for f in with_face], dtype=np.float64)
    dists = np.array([f.distance for f in with_face], dtype=np.float64)
    scores = np.array([f.score for f in with_face], dtype=np.float64)
    passes = np.array([bool(f.passes) for f in with_face])
    swaps = swap_segments(frames, min_len, fps) if protocol == "full" else []
    msg = []
    if base["detection_rate"] < 1.0:
        msg.append(f"face missing in {n - len(with_face)} of {n} frames")
    if swaps:
        msg.append(f"{len(swaps)} identity swap(s)")
    return MediaSummary(
        **base,
        mean_similarity=_r(sims.mean()),
        p10_similarity=_r(np.percentile(sims, 10)),
        min_similarity=_r(sims.min()),
        mean_distance=_r(dists.mean()),
        max_distance=_r(dists.max()),
        pass_rate=_r(passes.mean(), 4),
        score=_r(scores.mean(), 2),
        facesim=_r(sims.mean()) if protocol == "opens2v" else None,
        drift=drift(frames),
        swaps=swaps,
        message="; ".join(msg),
    )


def missing_tolerance(expected: int) -> int:
    """Frames a whole video may decode short of what its container says: max(2, 1 %). Duration x fps is
    rounded, and containers differ on whether the last frame's duration is counted."""
    return max(2, math.ceil(0.01 * expected))


def video_damage(
    *,
    expected: int | None,
    expected_from: str | None,
    decoded: int,
    errors: int = 0,
    corrupt: int = 0,
    messages: Sequence[str] = (),
) -> MediaDamage:
    """A video's decode record: damaged when a packet failed, a frame came out flagged corrupt, or more than
    `missing_tolerance` frames are missing against the container (a truncated file decodes cleanly, short)."""
    missing = (expected - decoded) if expected else 0
    return MediaDamage(
        damaged=bool(errors or corrupt or missing > missing_tolerance(expected or 0)),
        frames_expected=expected,
        expected_from=expected_from,
        frames_decoded=decoded,
        decode_errors=errors,
        corrupt_frames=corrupt,
        errors=list(messages),
    )


@dataclass(frozen=True)
class Verdict:
    """The pass/fail decision on a report (`gate`), shared by `flx score --min-score`, batch runs and the server."""

    passed: bool
    failure: Literal["damaged", "score"] | None = None
    reason: str = ""  # one line naming the problem and the fix; empty when passed
    damaged: tuple[str, ...] = ()  # the damaged media (paths), also when allowed

    def error(self) -> EngineError | None:
        """The failure as the engine error to raise: `DamagedMedia` (exit 9) or, for a low score, exit 1."""
        if self.passed:
            return None
        return DamagedMedia(self.reason) if self.failure == "damaged" else ScoreBelowMinimum(self.reason)


def _name(m) -> str:
    return m.path or m.kind


def check_min_score(min_score: float | None) -> None:
    """A score threshold is a percentage: anything else is one `InputError` line (checked before scoring)."""
    if min_score is not None and not (math.isfinite(min_score) and 0.0 <= min_score <= 100.0):
        raise InputError(f"--min-score {min_score:g} is not allowed: use a number from 0 to 100 (percent)")


def gate(report: ScoreReport, min_score: float | None, allow_damaged: bool = False) -> Verdict:
    """Does `report` pass? Damaged media fail first (their score covers only what decoded) unless
    `allow_damaged`; then the overall score must be at least `min_score` (None: no score requirement)."""
    check_min_score(min_score)
    bad = [m for m in report.media if m.damage is not None and m.damage.damaged]
    names = tuple(_name(m) for m in bad)
    if bad and not allow_damaged:
        listed = "; ".join(f"{_name(m)} ({m.damage.describe()})" for m in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        return Verdict(
            False,
            "damaged",
            f"damaged media: {listed}{more}: re-export or re-download {'them' if len(bad) > 1 else 'it'}, "
            "or pass --allow-damaged to judge only the frames that decoded",
            names,
        )
    score = report.overall.score
    if min_score is not None and (score is None or score < min_score):
        got = "no face was scored in any media" if score is None else f"overall score {score:.1f}%"
        return Verdict(
            False,
            "score",
            f"{got} is below --min-score {min_score:g}: see the swaps and failing frames in the summary "
            "(--plot / --sheet show them)",
            names,
        )
    return Verdict(True, damaged=names)
