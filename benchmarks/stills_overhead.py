"""What the engine adds around an identity still: ours (`Engine.still` with a library character: character lookup
and verification, prompt composer, bucket, FaceID-Plus-v2 inputs, seeded render, resize, PNG with full metadata,
atomic write) vs the plain diffusers call on the same tiny weights and inputs (`load_ip_adapter`, the CLIP
structure embeds set on the projection layer, `pipe(ip_adapter_image_embeds=...)`, `image.save`), side by side.

    .venv/bin/python benchmarks/stills_overhead.py [--faces-dir ../shared/testdata/faces] [--repeats 31] [--save FILE]

Face analysis (preparing a character version's face crop and keypoints, cached per warm Engine) and scoring (the
consistency scorer on each candidate) are timed separately and left out of the ratio, as the Stills issue asks.
Pairs are interleaved and the ratio is the median of per-pair ratios, with its 10th-90th percentile spread.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESET = "tiny-stills-faceid-sdxl"
TWIN = "tiny-arcface-buffalo_l-w600k_r50"


def _once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _paired(plain, ours, repeats: int):
    p, o = [], []
    for i in range(repeats):
        first, second = (ours, plain) if i % 2 else (plain, ours)
        a, b = _once(first), _once(second)
        (o if i % 2 else p).append(a)
        (p if i % 2 else o).append(b)
    ratios = sorted(b / a for a, b in zip(p, o))
    q = statistics.quantiles(ratios, n=10)
    return statistics.median(p), statistics.median(o), statistics.median(ratios), q[0], q[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces-dir", type=Path, default=REPO.parent / "shared" / "testdata" / "faces")
    ap.add_argument("--weights-dir", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--save", type=Path, default=None)
    args = ap.parse_args()

    import diffusers
    import torch
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    from engine._core.settings import EngineSettings
    from engine.api import Engine
    from engine.characters import create_character, reembed
    from engine.identity.registry import get_analyzer
    from engine.pipelines.stills_sdxl.conditioning import faceid_inputs
    from engine.scoring.stills import score_still
    from engine.shots.still import _method_info, identity_input

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp(prefix="flx-bench-stills-"))
    base = EngineSettings(weights_dir=args.weights_dir) if args.weights_dir else EngineSettings()
    settings = base.model_copy(
        update={"home": tmp, "library_path": tmp / "library.sqlite", "weights_dir": base.weights_root}
    )
    eng = Engine(settings)
    dlib = get_analyzer()
    ch = create_character("ava", [args.faces_dir / "obama.jpg", args.faces_dir / "obama2.jpg"], None, dlib)
    ch = reembed(ch, get_analyzer(TWIN, settings=settings))
    with eng.library() as lib:
        lib.add(ch)
    preset = eng.preset(PRESET)
    loaded = eng.pipeline(PRESET)

    # face analysis: a character version's crop and keypoints (what the warm Engine caches)
    info = _method_info(eng, preset)
    analysis = statistics.median(_once(lambda: identity_input(ch, info, dlib)) for _ in range(5))
    ident = identity_input(ch, info, dlib)

    # the plain diffusers call on the same weights and inputs
    plain = diffusers.StableDiffusionXLPipeline.from_pretrained(eng.store.require(preset.components.base))
    plain.scheduler = type(loaded.pipe.scheduler).from_config(loaded.pipe.scheduler.config)
    adapter = eng.store.manifest.get(preset.components.identity_adapter)
    plain.load_ip_adapter(
        str(eng.store.require(adapter.id)), subfolder="", weight_name=adapter.weight_name, image_encoder_folder=None
    )
    plain.set_progress_bar_config(disable=True)
    plain.set_ip_adapter_scale(preset.identity.scale)
    inputs = faceid_inputs(loaded, [ident], cfg=True)
    proj = plain.unet.encoder_hid_proj.image_projection_layers[0]

    def plain_still():
        proj.clip_embeds, proj.shortcut, proj.shortcut_scale = (
            inputs.clip_embeds,
            True,
            preset.identity.structure_scale,
        )
        image = plain(
            "studio portrait photo",
            ip_adapter_image_embeds=inputs.pipeline_kwargs["ip_adapter_image_embeds"],
            num_inference_steps=preset.steps,
            guidance_scale=preset.guidance,
            width=preset.width,
            height=preset.height,
            generator=torch.Generator().manual_seed(1),
        ).images[0]
        image.save(tmp / "plain.png")

    def ours():
        eng.still(
            PRESET,
            "studio portrait photo",
            out=tmp / "ours.png",
            seed=1,
            characters=["ava"],
            score=False,
            negative_prompt="",  # the plain call's inputs: no negative prompt (the profile is empty: no drift)
        )

    ours()  # warm: the identity inputs are now cached, as in a batch of shots
    plain_still()
    pt, ot, ratio, lo, hi = _paired(plain_still, ours, args.repeats)
    out = eng.still(PRESET, "studio portrait photo", out=tmp / "scored.png", seed=1, characters=["ava"])
    from engine.characters import identity_reference
    from engine.identity.images import load_image

    ref = identity_reference(ch, dlib.info)
    img = load_image(out.path)
    scoring = statistics.median(_once(lambda: score_still(img, [ref], dlib)) for _ in range(5))
    lines = [
        f"{PRESET}: plain diffusers FaceID-Plus-v2 call + save {pt * 1000:.1f} ms | Engine.still {ot * 1000:.1f} ms | "
        f"ratio {ratio:.2f}x [{lo:.2f}-{hi:.2f}] (median of {args.repeats} interleaved pairs; goal <= 1.05)",
        f"timed separately: face analysis per character version {analysis * 1000:.1f} ms (cached by a warm Engine), "
        f"scoring per candidate {scoring * 1000:.1f} ms",
    ]
    print("\n".join(lines))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
