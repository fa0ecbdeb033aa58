"""Pictures of a score report: the per-frame score over time, and a contact sheet of the worst faces.

Both are written atomically; matplotlib runs on its Agg backend (no display needed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine._core.atomic import atomic_path

from .consistency import WorstFrames
from .schema import MediaReport, ScoreReport

_MAX_PANELS = 8


def _label(m: MediaReport) -> str:
    return Path(m.path).name if m.path else m.kind


def write_plot(report: ScoreReport, out_path: str | os.PathLike) -> Path:
    """One panel per media (first 8): per-frame score (%) over time, the threshold line, swaps shaded red,
    frames without a face marked grey, embedded frames as dots."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    media = report.media[:_MAX_PANELS]
    fig = Figure(figsize=(11, 2.9 * max(1, len(media)) + 0.6), dpi=110, layout="constrained")
    axes = fig.subplots(max(1, len(media)), 1, squeeze=False)[:, 0]
    pass_score = report.options.curve.pass_score
    for ax, m in zip(axes, media):
        timed = all(f.time_s is not None for f in m.frames) and m.frames
        xs = np.array([f.time_s if timed else f.index for f in m.frames], dtype=float)
        ys = np.array([np.nan if f.score is None else f.score for f in m.frames], dtype=float)
        step = (1.0 / m.fps) if (timed and m.fps) else 1.0
        for s in m.summary.swaps:
            x0 = s.start_s if timed and s.start_s is not None else s.start_frame
            x1 = s.end_s if timed and s.end_s is not None else s.end_frame + 1
            ax.axvspan(x0, x1, color="#d62728", alpha=0.15, lw=0)
            ax.text(
                (x0 + x1) / 2,
                103,
                f"swap {x0:.2f}-{x1:.2f}" + ("s" if timed else ""),
                ha="center",
                va="bottom",
                fontsize=8,
                color="#a01010",
            )
        noface = xs[np.isnan(ys)]
        if len(noface):
            ax.vlines(noface, -4, 0, color="0.55", lw=max(0.6, 1.0), label="no face")
        ax.plot(xs, ys, color="#1f77b4", lw=1.4, label="per-frame score")
        emb = np.array([f.source == "embedded" for f in m.frames])
        if emb.any():
            ax.plot(xs[emb], ys[emb], "o", ms=3, color="#1f77b4", label="measured (embedded)")
        ax.axhline(pass_score, color="#d62728", ls="--", lw=1.0, label=f"threshold (d = {report.encoder.threshold:g})")
        s = m.summary
        score = "n/a" if s.score is None else f"{s.score:.1f}%"
        extra = f"  FaceSim {s.facesim:.3f}" if s.facesim is not None else ""
        damaged = f"\nDAMAGED: {damage_text(m)}" if m.damage is not None and m.damage.damaged else ""
        ax.set_title(
            f"{_label(m)}: score {score}, face found {100 * s.detection_rate:.0f}%, "
            f"pass {('n/a' if s.pass_rate is None else f'{100 * s.pass_rate:.0f}%')}, swaps {len(s.swaps)}{extra}"
            f"{damaged}",
            fontsize=10,
            loc="left",
            color="#a01010" if damaged else "black",
        )
        ax.set_ylim(-5, 112)
        if len(xs):
            ax.set_xlim(xs.min() - step / 2, xs.max() + step / 2 if len(xs) > 1 else xs.min() + 1)
        ax.set_ylabel("score (%)")
        ax.set_xlabel("time (s)" if timed else "image #")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8, ncol=2, framealpha=0.85)
    if len(report.media) > _MAX_PANELS:
        fig.suptitle(f"first {_MAX_PANELS} of {len(report.media)} media", fontsize=9)
    fig.text(
        0.995,
        0.002,
        f"{report.reference.name} | {report.encoder.encoder_id} | protocol {report.protocol}",
        ha="right",
        va="bottom",
        fontsize=7,
        color="0.4",
    )
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close("all")
    return out_path


def write_contact_sheet(
    report: ScoreReport, worst: WorstFrames, out_path: str | os.PathLike, *, n: int = 12, columns: int = 6
) -> Path:
    """A grid of the worst-scoring face crops, each captioned with its score, distance, media and time."""
    from PIL import Image, ImageDraw, ImageFont

    picks = worst.pick(n, min_gap=max(1, int(round((report.media[0].fps or 12) / 2))) if report.media else 1)
    cell, cap = worst.size + 16, 38
    cols = max(1, min(columns, len(picks)))
    rows = max(1, (len(picks) + cols - 1) // cols)
    head = 28
    sheet = Image.new("RGB", (cols * cell, head + rows * (cell + cap)), "white")
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=12)
        big = ImageFont.load_default(size=14)
    except TypeError:  # very old Pillow
        font = big = ImageFont.load_default()
    title = f"Worst frames vs {report.reference.name} ({report.encoder.encoder_id}, threshold {report.encoder.threshold:g})"
    if not picks:
        title = "No faces were measured: nothing to show"
    draw.text((8, 6), title, fill="black", font=big)
    thr = report.encoder.threshold
    for k, t in enumerate(picks):
        r, c = divmod(k, cols)
        x, y = c * cell, head + r * (cell + cap)
        img = Image.fromarray(t.image)
        ok = t.distance < thr
        border = "#2ca02c" if ok else "#d62728"
        draw.rectangle([x + 4, y + 4, x + cell - 5, y + cell - 5], outline=border, width=3)
        sheet.paste(img, (x + (cell - img.width) // 2, y + (cell - img.height) // 2))
        m = report.media[t.media] if t.media < len(report.media) else None
        when = f"{t.time_s:.2f}s" if t.time_s is not None else f"#{t.index}"
        name = _label(m) if m is not None else ""
        if m is not None and m.frames and m.kind in ("images", "image"):
            f = next((fr for fr in m.frames if fr.index == t.index), None)
            if f is not None and f.file:
                name = Path(f.file).name
        draw.text((x + 6, y + cell), f"{-t.neg_score:.0f}%  d={t.distance:.2f}", fill=border, font=font)
        draw.text((x + 6, y + cell + 15), f"{when} {name}"[:26], fill="black", font=font)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        sheet.save(tmp, format="PNG")
    return out_path


def damage_text(m: MediaReport) -> str:
    """What is wrong with a damaged media, for the summary and the plot: "5 of 72 frames decoded, 3 decode
    errors (first: packet at 0.79s: Invalid data found when processing input)", or why it could not be read."""
    d = m.damage
    if d is None:
        return ""
    if d.unreadable:
        return f"could not be read: {d.unreadable}"
    first = f" (first: {d.errors[0]})" if d.errors else ""
    return d.describe() + first


def summary_lines(report: ScoreReport) -> list[str]:
    """A short human-readable summary (what `flx score` and `make demo` print). A damaged media gets its own
    "DAMAGED: ..." line under its score, so a score over part of a file is never read as the whole."""
    enc = report.encoder
    ref = report.reference
    lines = [
        (
            f"character {ref.name} ({ref.character_id} v{ref.version}), "
            f"encoder {enc.encoder_id} (threshold {enc.threshold:g} {enc.metric}), protocol {report.protocol}"
        )
    ]
    for m in report.media:
        s = m.summary
        if m.damage is not None and m.damage.unreadable:
            lines.append(f"  {_label(m)}: not scored")
            lines.append(f"    DAMAGED: {damage_text(m)}")
            lines.extend(f"    skipped {sk.path}: {sk.reason}" for sk in m.skipped)
            continue
        score = "n/a" if s.score is None else f"{s.score:.1f}%"
        parts = [
            f"{_label(m)}: score {score}",
            f"face found {100 * s.detection_rate:.0f}% of {s.frames_scored} frames",
        ]
        if s.pass_rate is not None:
            parts.append(f"pass {100 * s.pass_rate:.0f}%")
        if s.mean_distance is not None:
            parts.append(f"mean d {s.mean_distance:.3f}")
        if s.facesim is not None:
            parts.append(f"FaceSim {s.facesim:.3f}")
        lines.append("  " + ", ".join(parts))
        if m.damage is not None and m.damage.damaged:
            lines.append(f"    DAMAGED: {damage_text(m)}")
        for sw in s.swaps:
            span = f"{sw.start_s:.2f}-{sw.end_s:.2f}s" if sw.start_s is not None else ""
            lines.append(
                f"    identity swap: frames {sw.start_frame}-{sw.end_frame} {span} (mean d {sw.mean_distance:.3f})"
            )
        if s.message and s.score is None:
            lines.append(f"    {s.message}")
        for sk in m.skipped:
            lines.append(f"    skipped {sk.path}: {sk.reason}")
    if report.sequence is not None:
        for seam in report.sequence.seams:
            d = "n/a" if seam.distance is None else f"{seam.distance:.3f}"
            verdict = "" if seam.passes is None else (" ok" if seam.passes else " IDENTITY JUMP")
            lines.append(f"  seam clip {seam.from_clip}->{seam.to_clip}: d {d}{verdict}")
    o = report.overall
    if len(report.media) > 1 and o.score is not None:
        damaged = f" ({o.damaged_media} DAMAGED)" if o.damaged_media else ""
        lines.append(f"overall score {o.score:.1f}% over {o.media_count} media{damaged}")
    return lines
