"""A PNG chart of a training run: loss per step and validation likeness, on one figure with two axes.

Drawn with matplotlib's Agg backend (no display needed; the global backend is left alone) and written atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path


def write_chart(
    losses: Sequence[tuple[int, float]],
    validations: Sequence,
    out_path: str | os.PathLike,
    *,
    best_step: int | None = None,
    title: str = "LoRA training",
) -> Path:
    """Loss (left axis, raw and smoothed) and likeness (right axis, percent) over steps, best step marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from engine._core.atomic import atomic_write_bytes

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if losses:
        steps = [s for s, _ in losses]
        vals = [v for _, v in losses]
        ax.plot(steps, vals, color="#9bb7d4", linewidth=0.8, label="loss")
        k = max(1, len(vals) // 20)
        smooth = [
            sum(vals[max(0, i - k + 1) : i + 1]) / len(vals[max(0, i - k + 1) : i + 1]) for i in range(len(vals))
        ]
        ax.plot(steps, smooth, color="#1f5fa8", linewidth=1.6, label=f"loss (mean of {k})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    scored = [v for v in validations if v.likeness is not None]
    if scored:
        ax2 = ax.twinx()
        ax2.plot([v.step for v in scored], [v.likeness for v in scored], "o-", color="#c0392b", label="likeness")
        ax2.set_ylabel("likeness (%)")
        ax2.set_ylim(0, 100)
        ax2.legend(loc="upper right")
    if best_step is not None:
        ax.axvline(best_step, color="#27ae60", linestyle="--", linewidth=1.0, label=f"best (step {best_step})")
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(out_path, buf.getvalue())


__all__ = ["write_chart"]
