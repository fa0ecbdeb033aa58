"""Benchmark `flx score` on a 30 s 1080p 24 fps H.264 clip with a known spliced-in other person.

    .venv/bin/python benchmarks/score_video.py [--faces-dir ../shared/testdata/faces] [--seconds 30] [--no-naive]

Builds the clip (obama.jpg / obama2.jpg crops moving and zooming on a 1920x1080 canvas, biden.jpg spliced
in from 14 s to 18 s), then, each in a fresh process, scores it with each protocol and runs the naive
baseline (decode every frame, `analyzer.analyze(frame)` on full-size frames: the plain library call; timed
on a prefix and extrapolated for `full`, measured for the 32 opens2v samples), and prints wall time
(model load excluded, and with it), frames/s, peak RSS, whether the splice was found, and the speed-ups.
Goal on a 2-core machine: `full` >= 24 frames/s with the splice found; `opens2v` under 5 s.
This is a benchmark, not a test: numbers depend on the machine and its load (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(faces_dir: Path, *, native: bool = False):
    """Analyzer (dlib models loaded, and the torch port of dlib's network unless `native`: dlib's own
    `compute_face_descriptor`, the plain library call), reference, and the load time."""
    import numpy as np

    from engine.identity.dlib_backend import DlibFaceAnalyzer
    from engine.scoring import reference_from_photos

    t0 = time.perf_counter()
    analyzer = DlibFaceAnalyzer(embedder="dlib" if native else "torch")
    analyzer.analyze(np.zeros((64, 64, 3), "uint8"))  # dlib models
    analyzer._torch_embedder()  # torch import + network read from dlib's .dat (None when native)
    load_s = time.perf_counter() - t0
    reference = reference_from_photos([faces_dir / "obama.jpg", faces_dir / "obama2.jpg"], analyzer)
    return analyzer, reference, load_s


def _rss() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _run_one(clip: Path, protocol: str, faces_dir: Path) -> dict:
    from engine.scoring import score_media

    analyzer, reference, load_s = _load(faces_dir)
    t0 = time.perf_counter()
    report = score_media([clip], reference, analyzer, protocol)
    wall = time.perf_counter() - t0
    m = report.media[0]
    return {
        "protocol": protocol,
        "wall_s": round(wall, 2),
        "load_s": round(load_s, 2),
        "frames": m.summary.frames_total,
        "frames_per_s": round(m.summary.frames_total / wall, 1),
        "detections": m.summary.frames_analysed,
        "embedded_frames": m.summary.frames_embedded,
        "peak_rss_mb": _rss(),
        "score": m.summary.score,
        "facesim": m.summary.facesim,
        "detect_every": m.sampling.detect_every,
        "swaps": [s.model_dump() for s in m.summary.swaps],
    }


def _run_naive(clip: Path, mode: str, faces_dir: Path, prefix: int) -> dict:
    """The plain library call: decode frames in order and run `analyzer.analyze(frame)` (detect + embed
    every face, full-size frame, dlib's own embedding). `naive-full`: the first `prefix` frames, timed and
    extrapolated to the clip. `naive-opens2v`: every frame decoded, the 32 opens2v samples analysed."""
    import numpy as np

    from engine.scoring import opens2v_indices
    from engine.scoring.media import iter_video, probe_video

    analyzer, reference, _ = _load(faces_dir, native=True)
    ref = np.asarray(reference.embedding, dtype=np.float64)
    total = probe_video(clip, count=True).frames
    if mode == "naive-full":
        t0 = time.perf_counter()
        n = 0
        for fd in iter_video(clip):
            analyzer.analyze(fd.full())
            n += 1
            if n == prefix:
                break
        wall = time.perf_counter() - t0
        return {
            "mode": mode,
            "frames": n,
            "wall_s": round(wall, 2),
            "total_frames": total,
            "extrapolated_s": round(wall / n * total, 1),
            "peak_rss_mb": _rss(),
        }
    wanted = set(opens2v_indices(total))
    sims = []
    t0 = time.perf_counter()
    for fd in iter_video(clip, want=wanted.__contains__):
        faces = analyzer.analyze(fd.full())
        if faces:
            v = np.asarray(max(faces, key=lambda f: f.area).embedding, dtype=np.float64)
            sims.append(max(0.0, float(v @ ref / (np.linalg.norm(v) * np.linalg.norm(ref)))))
    wall = time.perf_counter() - t0
    return {
        "mode": mode,
        "frames": len(wanted),
        "wall_s": round(wall, 2),
        "total_frames": total,
        "facesim": round(float(np.mean(sims)), 4) if sims else None,
        "peak_rss_mb": _rss(),
    }


def _decoder_rss(clip: Path, total: int) -> float:
    """Peak RSS of the opens2v decoder child alone (spawned from a small parent: a child's ru_maxrss
    counts the parent's memory at spawn time, so measuring it under the scorer would report the scorer)."""
    from engine.scoring import opens2v_indices

    idx = ",".join(map(str, opens2v_indices(total)))
    code = (
        "import resource,subprocess,sys;"
        f"subprocess.run([sys.executable,'-m','engine.scoring._decode',{str(clip)!r},{idx!r}],"
        "stdout=subprocess.DEVNULL,check=True);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO)
    return float(out.stdout.strip().splitlines()[-1])


def _sub(clip: Path, faces_dir: Path, what: str, prefix: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--only",
        what,
        "--clip",
        str(clip),
        "--faces-dir",
        str(faces_dir),
        "--naive-frames",
        str(prefix),
    ]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces-dir", type=Path, default=REPO.parent / "shared" / "testdata" / "faces")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--clip", type=Path, default=None, help="Reuse/build the clip here (default: a temp folder).")
    ap.add_argument("--naive-frames", type=int, default=48, help="Frames the naive full baseline is timed on.")
    ap.add_argument("--no-naive", action="store_true", help="Skip the naive baselines (no ratios).")
    ap.add_argument("--only", choices=["full", "opens2v", "naive-full", "naive-opens2v"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only in ("full", "opens2v"):
        print(json.dumps(_run_one(args.clip, args.only, args.faces_dir)))
        return 0
    if args.only:
        print(json.dumps(_run_naive(args.clip, args.only, args.faces_dir, args.naive_frames)))
        return 0

    from engine.scoring.demo import build_demo_clip

    w, h = (int(v) for v in args.size.lower().split("x"))
    clip = args.clip or Path(tempfile.mkdtemp(prefix="flx-bench-")) / "bench.mp4"
    splice = (14.0 / 30.0, 18.0 / 30.0)
    t0 = time.perf_counter()
    clip, truth = build_demo_clip(args.faces_dir, clip, args.seconds, (w, h), splice=splice, preset="ultrafast")
    print(f"clip {clip} ({w}x{h}, {args.seconds:g} s, 24 fps) built in {time.perf_counter() - t0:.1f} s")
    print(
        f"truth: other person in frames {truth.start_frame}-{truth.end_frame} = {truth.start_s:.3f}-{truth.end_s:.3f} s"
    )
    print(f"load average before timing: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    res = {}
    for protocol in ("full", "opens2v"):
        r = res[protocol] = _sub(clip, args.faces_dir, protocol, args.naive_frames)
        line = (
            f"{protocol:8s} {r['frames']} frames in {r['wall_s']:.2f} s = {r['frames_per_s']:.1f} frames/s "
            f"({r['wall_s'] + r['load_s']:.2f} s with model load {r['load_s']:.2f} s), "
            f"{r['detections']} detections, {r['embedded_frames']} embedded frames, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB, score {r['score']}"
        )
        if protocol == "opens2v":
            line += f", facesim {r['facesim']}, decoder child peak RSS {_decoder_rss(clip, r['frames']):.0f} MB"
        print(line)
        if protocol == "full":
            found = [
                s for s in r["swaps"] if s["start_frame"] <= truth.end_frame and s["end_frame"] >= truth.start_frame
            ]
            if found:
                s = found[0]
                print(
                    f"         splice found: frames {s['start_frame']}-{s['end_frame']} = {s['start_s']:.3f}-{s['end_s']:.3f} s "
                    f"(truth {truth.start_frame}-{truth.end_frame}; off by {s['start_frame'] - truth.start_frame:+d} / "
                    f"{s['end_frame'] - truth.end_frame:+d} frames; detection interval {r['detect_every']})"
                )
            else:
                print("         splice NOT found")
            if len(r["swaps"]) != len(found):
                print(f"         {len(r['swaps']) - len(found)} false swap(s)")
    if args.no_naive:
        return 0
    nf = _sub(clip, args.faces_dir, "naive-full", args.naive_frames)
    no = _sub(clip, args.faces_dir, "naive-opens2v", args.naive_frames)
    print(
        f"naive    analyzer.analyze(frame) on every full-size frame: {nf['frames']} frames in {nf['wall_s']:.2f} s "
        f"-> {nf['total_frames']} frames ~{nf['extrapolated_s']:.1f} s (EXTRAPOLATED), peak RSS {nf['peak_rss_mb']:.0f} MB"
    )
    print(
        f"naive    opens2v: every frame decoded, analyzer.analyze on the {no['frames']} samples: {no['wall_s']:.2f} s "
        f"(measured), facesim {no['facesim']}, peak RSS {no['peak_rss_mb']:.0f} MB"
    )
    print(
        f"ratio    full    {nf['extrapolated_s'] / res['full']['wall_s']:.1f}x faster than naive (extrapolated) | "
        f"opens2v {no['wall_s'] / res['opens2v']['wall_s']:.1f}x faster than naive-on-32 (measured side by side)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
