"""What the engine adds around a render: ours (`Engine.still` / `Engine.clip`: preset, weights verification,
runtime plan, seeded render, PNG/MP4 with full metadata, atomic write) vs the plain diffusers call
(`Pipeline.from_pretrained(folder)(...)` + `image.save` / PyAV), side by side in one run on the tiny twins.

    .venv/bin/python benchmarks/render_overhead.py [--weights-dir DIR] [--repeats 5]

Prints load time, warm per-render time and their ratios. Tiny models make the fixed costs visible: on
real weights the denoiser dominates and these ratios approach 1.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

STILL, CLIP = "tiny-stills-sdxl", "tiny-video-wan21-i2v-480p"


def _time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights-dir", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=5)
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
    torch.set_num_threads(2)
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
        plain_load = _time(load_plain, 3)
        ours_load = _time(load_ours, 3)
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
            plain_t = _time(plain_still, args.repeats)
            ours_t = _time(lambda: eng.still(preset_name, "a portrait", seed=1, out=out / "ours.png"), args.repeats)
        else:
            plain_t = _time(plain_clip, args.repeats)
            ours_t = _time(
                lambda: eng.clip(preset_name, "turns", image=image, seed=1, out=out / "ours.mp4"), args.repeats
            )
        rows.append((preset_name, plain_load, ours_load, plain_t, ours_t))

    print(
        f"{'preset':28} {'load plain':>10} {'load ours':>10} {'ratio':>6} | {'render plain':>12} {'render ours':>11} {'ratio':>6}"
    )
    for name, pl, ol, pt, ot in rows:
        print(f"{name:28} {pl:9.3f}s {ol:9.3f}s {ol / pl:5.2f}x | {pt:11.3f}s {ot:10.3f}s {ot / pt:5.2f}x")
    print(
        "ours = verify weights against the lock + plan + render + save with metadata (atomic); median of",
        args.repeats,
        "warm renders",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
