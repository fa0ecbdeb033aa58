"""A tiny 3-segment sequence end to end (`flx sequence` on the tiny Wan VACE twin with Stand-In reference attention),
its time split into render / score / encode / interpolate (and stitch), from the engine's own timings.

    .venv/bin/python benchmarks/sequence.py [--faces-dir ../shared/testdata/faces] [--save FILE]

On tiny random weights the render is cheap and interpolation (ffmpeg's minterpolate, single-threaded) and the
scorer's face search dominate; on real weights the render is minutes per segment and the rest is noise. No faces
are drawn by random weights, so every segment drifts and the guard's retries are part of the measured time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces-dir", type=Path, default=REPO.parent / "shared" / "testdata" / "faces")
    ap.add_argument("--weights-dir", type=Path, default=None)
    ap.add_argument("--retries", type=int, default=1)
    ap.add_argument("--save", type=Path, default=None)
    args = ap.parse_args()

    from diffusers.utils import logging as dlog

    from engine._core.settings import EngineSettings
    from engine.api import Engine
    from engine.characters import create_character
    from engine.identity.registry import get_analyzer
    from engine.shots.sequence import SequenceSpec

    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp(prefix="flx-bench-seq-"))
    base = EngineSettings(weights_dir=args.weights_dir) if args.weights_dir else EngineSettings()
    eng = Engine(base.model_copy(update={"home": tmp, "weights_dir": base.weights_root}))
    with eng.library() as lib:
        lib.add(
            create_character(
                "ava", [args.faces_dir / "obama.jpg", args.faces_dir / "obama2.jpg"], None, get_analyzer()
            )
        )
    spec = SequenceSpec(
        preset="tiny-video-wan21-vace-14b-standin", character="ava", segment_seconds=1.0,
        shots=[{"prompt": "walks along a beach", "seconds": 2.0}, {"prompt": "sits down", "seconds": 1.0}],
        drift={"min_score": 50.0, "retries": args.retries, "reanchor": True},
    )  # fmt: skip
    eng.pipeline(spec.preset)  # load outside the timing
    t0 = time.perf_counter()
    result = eng.sequence(spec, out=tmp / "sequence.mp4")
    wall = time.perf_counter() - t0
    report = json.loads(result.report_path.read_text())
    parts = {"render": 0.0, "interpolate": 0.0, "resize": 0.0, "score": 0.0, "encode": 0.0}
    attempts = 0
    for seg in result.segments:
        for a in seg["attempts"]:
            attempts += 1
            for k in parts:
                parts[k] += a["timing"].get(k, 0.0)
    stitch = report["stitched"]["encode_s"] + report["stitched"]["decode_s"]
    accounted = sum(parts.values()) + stitch
    lines = [
        f"3-segment tiny sequence ({len(result.segments)} segments, {attempts} renders incl. drift retries, "
        f"{report['stitched']['frames']} frames at 24 fps): wall {wall:.2f} s",
        "  "
        + " | ".join(f"{k} {v:.2f} s ({v / wall:.0%})" for k, v in parts.items())
        + f" | stitch {stitch:.2f} s ({stitch / wall:.0%}) | other {wall - accounted:.2f} s "
        "(mostly reference preparation: face crop + VAE encode, redone for every attempt)",
    ]
    print("\n".join(lines))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
