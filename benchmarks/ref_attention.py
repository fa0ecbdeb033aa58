"""What Stand-In's reference attention costs per transformer call: stock vs with the reference, cached (the K/V
computed once, as the engine runs it) and uncached (the reference stream recomputed on every call, as Stand-In
without its KV cache), side by side in one run.

    .venv/bin/python benchmarks/ref_attention.py [--repeats 7] [--save benchmarks/results/ref_attention.txt]

The token ratio is the real one (Wan 2.1 14B at 480x832x81: 21x30x52 = 32,760 video tokens; a 512 px reference:
32x32 = 1,024 tokens), scaled down in size but not in ratio: 16x16x16 = 4,096 video tokens and 8x16 = 128
reference tokens (1:32). The width is scaled so attention and the linear layers keep the real share of a
block's work (sequence length / (3 x width + FFN width) = 1.12 for the 14B, 1.12 here: width 640, FFN 1,728,
10 heads of 64), with 512 text tokens. Random weights, float32, CPU. The three sides are interleaved (so drift
hits all alike), each ratio is the median of the per-round ratios, and the 10th-90th percentile spread is printed
next to it: a ratio means something only when its spread is narrow. A CFG step is two such calls.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

VIDEO_GRID = (16, 16, 16)  # post-patch F, H, W: 4,096 tokens
REF_HW = (8, 16)  # post-patch reference rows, columns: 128 tokens (1:32, the real 1,024 : 32,760)
WIDTH, HEADS, FFN, BLOCKS, TEXT = 640, 10, 1728, 2, 512


def _model():
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=HEADS,
        attention_head_dim=WIDTH // HEADS,
        in_channels=16,
        out_channels=16,
        text_dim=64,
        freq_dim=256,
        ffn_dim=FFN,
        num_layers=BLOCKS,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=1024,
    ).eval()


def _lora(rank: int = 128):
    import torch

    g = torch.Generator().manual_seed(1)
    return {
        i: {
            p: (torch.randn(rank, WIDTH, generator=g) / rank, torch.randn(WIDTH, rank, generator=g) * 0.02)
            for p in "qkv"
        }
        for i in range(BLOCKS)
    }


def _quantiles(xs):
    q = statistics.quantiles(xs, n=10) if len(xs) >= 2 else [xs[0]] * 9
    return statistics.median(xs), q[0], q[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7, help="Interleaved rounds (stock, cached, uncached).")
    ap.add_argument("--save", type=Path, default=None, help="Also write the printed table to this file.")
    args = ap.parse_args()

    import torch

    from engine.adapters.standin import StandInWeights, attach
    from engine.processors.attention_wan import compute_reference_kv

    torch.set_grad_enabled(False)
    tr = _model()
    weights = StandInWeights(lora=_lora(), rank=128, dim=WIDTH, name="random")
    f, h, w = VIDEO_GRID
    g = torch.Generator().manual_seed(2)
    latents = torch.randn(1, 16, f, 2 * h, 2 * w, generator=g)
    text = torch.randn(1, TEXT, 64, generator=g)
    ref = torch.randn(1, 16, 1, 2 * REF_HW[0], 2 * REF_HW[1], generator=g)
    t = torch.tensor([500])

    def call():
        tr(latents, t, text, return_dict=False)

    handle = attach(tr, weights)
    handle.prepare(ref, [1.0], VIDEO_GRID)
    cached_state = dict(handle.state.kv)

    def stock():
        handle.state.active = False  # every processor runs the stock path
        call()

    def cached():
        handle.state.active = True
        call()

    def uncached():
        handle.state.active = True
        handle.state.kv.update(compute_reference_kv(tr, ref, VIDEO_GRID, weights.lora))
        call()

    for fn in (stock, cached, uncached):  # warm-up
        fn()
    times = {"stock": [], "cached": [], "uncached": []}
    order = [("stock", stock), ("cached", cached), ("uncached", uncached)]
    for i in range(args.repeats):
        rot = order[i % 3 :] + order[: i % 3]  # rotate who goes first
        for name, fn in rot:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    handle.state.kv.clear()
    handle.state.kv.update(cached_state)
    handle.detach()

    lv = f * h * w
    lr = REF_HW[0] * REF_HW[1]
    med = {k: statistics.median(v) for k, v in times.items()}
    r_cached = _quantiles([c / s for c, s in zip(times["cached"], times["stock"])])
    r_uncached = _quantiles([u / s for u, s in zip(times["uncached"], times["stock"])])
    lines = [
        f"tokens: {lv} video + {lr} reference (1:{lv / lr:.1f}; real 32760 + 1024 = 1:{32760 / 1024:.1f}), "
        f"{TEXT} text; width {WIDTH}, FFN {FFN}, {BLOCKS} blocks, float32, {torch.get_num_threads()} CPU threads",
        f"per transformer call   stock {med['stock']:.3f}s   cached {med['cached']:.3f}s   "
        f"uncached {med['uncached']:.3f}s",
        f"ratio cached / stock     {r_cached[0]:.3f}x [{r_cached[1]:.3f}-{r_cached[2]:.3f}]   (goal <= 1.05x; "
        "Stand-In reports +2.3%)",
        f"ratio uncached / stock   {r_uncached[0]:.3f}x [{r_uncached[1]:.3f}-{r_uncached[2]:.3f}]   "
        "(reference stream recomputed every call; Stand-In reports +3.6%)",
        f"{args.repeats} interleaved rounds; ratio = median of per-round ratios [10th-90th percentile]",
    ]
    text_out = "\n".join(lines)
    print(text_out)
    if args.save:
        from engine._core.atomic import atomic_write_text

        atomic_write_text(args.save, text_out + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
