"""What the character-LoRA training loop costs per step over a minimal plain peft + diffusers loop.

    .venv/bin/python benchmarks/train_step.py [--rounds 5] [--steps 12] [--save benchmarks/results/train_step.txt]

Both sides train the same LoRA (rank 8 on to_q/to_k/to_v/to_out.0) on the same tiny SDXL twin (the weights
`scripts/make_tiny_weights.py` writes), batch 1 at 64 px, float32 on the CPU. Ours is `train_character_lora` as a
user runs it (Accelerator, cached latents and text embeddings, seeded data order, checkpoint-ready RNG, progress
callback); its step time is the gap between consecutive progress calls, so the once-per-run setup (face checks,
VAE encoding) and the closing validation and export are not counted. The plain loop is what a tutorial writes:
`unet.add_adapter`, AdamW, one cached batch, noise, UNet, MSE, backward, step, `loss.item()`. The sides
alternate step by step (ours calls one plain step from its progress callback, on a second copy of the pipeline),
so machine load hits both alike; the ratio is the median over rounds of the ratio of median step times, with the
10th-90th percentile spread. Goal: <= 1.05.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _faces_dir() -> Path:
    env = os.environ.get("FLX_TESTDATA")
    return Path(env) if env else REPO.parent / "shared" / "testdata" / "faces"


def _setup():
    from engine._core.settings import EngineSettings
    from engine.characters import create_character
    from engine.identity.registry import get_analyzer
    from engine.models.store import WeightsStore
    from engine.pipelines.loading import load_pipeline
    from engine.presets import load_preset
    from engine.runtime import DeviceInfo, plan_runtime

    home = Path(tempfile.mkdtemp(prefix="flx-bench-"))
    settings = EngineSettings(home=home, weights_dir=EngineSettings().weights_root)  # the installed tiny twins
    store = WeightsStore(settings)
    plan = plan_runtime(0.1, "cpu", device_info=DeviceInfo(cuda_available=False))
    loaded = load_pipeline(load_preset("tiny-stills-sdxl", settings.presets_dir), store, plan)
    analyzer = get_analyzer()
    faces = _faces_dir()
    character = create_character("bench", [faces / "obama.jpg", faces / "obama2.jpg"], None, analyzer)
    return home, loaded, character, analyzer


class _Plain:
    """The plain loop on its own pipeline copy, one step per call."""

    def __init__(self, loaded):
        import torch
        from diffusers import DDPMScheduler
        from peft import LoraConfig

        pipe = loaded.pipe
        self.unet = pipe.unet
        self.unet.requires_grad_(False)
        self.unet.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian",
                                         target_modules=["to_k", "to_q", "to_v", "to_out.0"]), "plain")  # fmt: skip
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=1e-2)
        self.sched = DDPMScheduler.from_config(pipe.scheduler.config)
        with torch.no_grad():
            x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1  # image-like values
            self.latents = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
            self.embeds, _, self.pooled, _ = pipe.encode_prompt(
                "photo of ohwx person", device="cpu", do_classifier_free_guidance=False
            )
        self.time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]], dtype=torch.float32)
        self.unet.train()

    def step(self) -> float:
        import torch
        import torch.nn.functional as F

        t0 = time.perf_counter()
        noise = torch.randn_like(self.latents)
        t = torch.randint(0, self.sched.config.num_train_timesteps, (1,))
        pred = self.unet(self.sched.add_noise(self.latents, noise, t), t, encoder_hidden_states=self.embeds,
                         added_cond_kwargs={"text_embeds": self.pooled, "time_ids": self.time_ids}).sample  # fmt: skip
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        loss.item()
        return time.perf_counter() - t0


def _round(loaded, plain: _Plain, character, analyzer, out: Path, steps: int) -> tuple[list[float], list[float]]:
    """One `train_character_lora` run whose progress callback runs one plain step after each of ours: the two
    alternate step by step. Ours = the gap between progress calls minus the plain step inside it."""
    from engine.training import TrainSpec, train_character_lora

    spec = TrainSpec(preset="tiny-stills-sdxl", source="refs", steps=steps, rank=8, min_images=2,
                     checkpoint_every=10_000, validate_every=10_000, validation_steps=1)  # fmt: skip
    ours: list[float] = []
    plains: list[float] = []
    last = [0.0]

    def progress(step, total, loss, rate, eta):
        now = time.perf_counter()
        if step > 1:
            ours.append(now - last[0])
        plains.append(plain.step())
        last[0] = time.perf_counter()

    train_character_lora(loaded, spec, out, character=character, analyzer=analyzer, resume=False, progress=progress)
    return ours, plains[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--save", type=Path, default=None)
    args = ap.parse_args()
    import torch

    home, loaded, character, analyzer = _setup()
    plain = _Plain(_setup()[1])  # its own pipeline: the two LoRAs never share a UNet
    _round(loaded, plain, character, analyzer, home / "warm", 3)  # warm-up of both paths
    ours, plains, ratios = [], [], []
    for r in range(args.rounds):
        o, p = _round(loaded, plain, character, analyzer, home / f"round{r}", args.steps)
        ours += o
        plains += p
        ratios.append(statistics.median(o) / statistics.median(p))
    plain = plains
    q = statistics.quantiles(ratios, n=10, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 9
    lines = [
        "train_step: character-LoRA training step vs a plain peft + diffusers loop (tiny SDXL twin, 64 px, batch 1,",
        f"rank 8, float32 CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores)",
        f"rounds {args.rounds} x {args.steps} steps, alternating step by step",
        f"plain loop : median step {statistics.median(plain) * 1000:.1f} ms ({1 / statistics.median(plain):.2f} steps/s)",
        f"ours       : median step {statistics.median(ours) * 1000:.1f} ms ({1 / statistics.median(ours):.2f} steps/s)",
        f"ratio ours/plain: median {statistics.median(ratios):.3f} (p10 {q[0]:.3f}, p90 {q[-1]:.3f}); goal <= 1.05",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.save:
        from engine._core.atomic import atomic_write_text

        atomic_write_text(args.save, text)


if __name__ == "__main__":
    main()
