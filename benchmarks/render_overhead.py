"""What the engine adds around a render: ours (`Engine.still` / `Engine.clip`: preset, weights verification,
runtime plan, seeded render, PNG/MP4 with full metadata, atomic write) vs the plain diffusers call
(`Pipeline.from_pretrained(folder)(...)` + `image.save` / PyAV), side by side in one run on the tiny twins.

    .venv/bin/python benchmarks/render_overhead.py [--weights-dir DIR] [--repeats 31] [--save FILE]

Prints load time, warm per-render time and their ratios. Tiny models make the fixed costs visible: on
real weights the denoiser dominates and these ratios approach 1.

A tiny render takes ~0.1 s, so machine noise is of the same size as the overhead being measured. The two
sides are therefore interleaved (plain, ours, plain, ours, ...) so that drift hits both alike, each ratio is
the median of the per-pair ratios, and the spread (10th-90th percentile of those ratios) is printed next to it:
a ratio means something only when its spread is narrow.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

STILL, CLIP = "tiny-stills-sdxl", "tiny-video-wan21-i2v-480p"


def _once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _paired(plain, ours, repeats: int) -> tuple[float, float, float, float, float]:
    """Interleaved timings: (median plain s, median ours s, median ratio, p10 ratio, p90 ratio)."""
    p, o = [], []
    for i in range(repeats):
        if i % 2:  # alternate which side goes first, so neither always runs on a warmer cache
            o.append(_once(ours))
            p.append(_once(plain))
        else:
            p.append(_once(plain))
            o.append(_once(ours))
    ratios = sorted(b / a for a, b in zip(p, o))
    q = statistics.quantiles(ratios, n=10) if len(ratios) >= 2 else [ratios[0]] * 9
    return statistics.median(p), statistics.median(o), statistics.median(ratios), q[0], q[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights-dir", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=31, help="Interleaved pairs per measurement.")
    ap.add_argument("--load-repeats", type=int, default=15, help="Interleaved pairs for the load times.")
    ap.add_argument("--save", type=Path, default=None, help="Also write the printed table to this file.")
    args = ap.parse_args()

    import av
    import diffusers
    import torch
    from diffusers.utils import logging as dlog
    from PIL import Image
    from transformers.utils import logging as tlog

    from engine._core.settings import EngineSettings
    from engine.api import Engine

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    settings = EngineSettings(weights_dir=args.weights_dir) if args.weights_dir else EngineSettings()
    eng = Engine(settings)
    out = Path(tempfile.mkdtemp(prefix="flx-bench-render-"))

    rows = []
    for preset_name, kind in ((STILL, "still"), (CLIP, "clip")):
        preset = eng.preset(preset_name)
        folder = eng.store.require(preset.components.base)
        cls = diffusers.WanImageToVideoPipeline if kind == "clip" else diffusers.StableDiffusionXLPipeline
        image = Image.new("RGB", (preset.width, preset.height), (128, 100, 90))

        def load_plain():
            pipe = cls.from_pretrained(folder, local_files_only=True).to("cpu")
            pipe.set_progress_bar_config(disable=True)
            return pipe

        def load_ours():
            Engine(settings).pipeline(preset_name)  # a fresh Engine: no warm cache

        load_plain(), load_ours()  # warm the file cache and imports for both before timing
        load = _paired(load_plain, load_ours, args.load_repeats)
        plain = load_plain()
        eng.pipeline(preset_name)

        common = dict(
            num_inference_steps=preset.steps, guidance_scale=preset.guidance, height=preset.height, width=preset.width
        )

        def plain_still():
            g = torch.Generator().manual_seed(1)
            plain("a portrait", generator=g, **common).images[0].save(out / "plain.png")

        def plain_clip():
            g = torch.Generator().manual_seed(1)
            frames = plain(
                image=image, prompt="turns", num_frames=preset.num_frames, generator=g, output_type="np", **common
            ).frames[0]
            with av.open(str(out / "plain.mp4"), "w") as c:
                s = c.add_stream("libx264", rate=24)
                s.width, s.height, s.pix_fmt = preset.width, preset.height, "yuv420p"
                for f in (np.clip(frames, 0, 1) * 255).astype(np.uint8):
                    c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
                c.mux(s.encode())

        if kind == "still":
            render = _paired(
                plain_still, lambda: eng.still(preset_name, "a portrait", seed=1, out=out / "ours.png"), args.repeats
            )
        else:
            render = _paired(
                plain_clip,
                lambda: eng.clip(preset_name, "turns", image=image, seed=1, out=out / "ours.mp4"),
                args.repeats,
            )
        rows.append((preset_name, load, render))

    lines = [
        f"{'preset':28} {'load plain':>10} {'load ours':>10} {'ratio [p10-p90]':>20} | "
        f"{'render plain':>12} {'render ours':>11} {'ratio [p10-p90]':>20}"
    ]
    for name, (pl, ol, lr, l10, l90), (pt, ot, rr, r10, r90) in rows:
        lines.append(
            f"{name:28} {pl:9.3f}s {ol:9.3f}s {lr:6.2f}x [{l10:.2f}-{l90:.2f}]   | "
            f"{pt:11.3f}s {ot:10.3f}s {rr:6.2f}x [{r10:.2f}-{r90:.2f}]"
        )
    lines.append(
        f"ours = verify weights + plan + render + save with metadata (atomic); {args.repeats} interleaved warm "
        f"render pairs, {args.load_repeats} load pairs; ratio = median of per-pair ratios"
    )
    print("\n".join(lines))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
