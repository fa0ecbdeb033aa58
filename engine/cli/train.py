"""`flx train NAME`: the character's identity LoRA, with likeness tracked while it trains, stored in the character."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .context import first_ctrl_c_stops, settings_from

console = Console(highlight=False)

TRAIN_FLAGS = {
    "source": "--from", "steps": "--steps", "rank": "--rank", "alpha": "--alpha", "lr": "--lr",
    "resolution": "--resolution", "train_text_encoder": "--text-encoder", "preset": "--preset", "seed": "--seed",
    "batch_size": "--batch-size", "grad_accum": "--grad-accum", "checkpoint_every": "--checkpoint-every",
    "validate_every": "--validate-every", "validation_prompts": "--validation-prompt", "trigger": "--trigger",
    "flip": "--flip", "prior_dir": "--prior-dir", "min_images": "--min-images",
    "validation_steps": "--validation-steps",
}  # fmt: skip


def _eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "-"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def train(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Character name or id in the library."),
    source: str | None = typer.Option(None, "--from", help="pack (default), refs, or a folder of images."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (default 1500)."),
    rank: int | None = typer.Option(None, "--rank", help="LoRA rank r (default 16)."),
    alpha: float | None = typer.Option(None, "--alpha", help="LoRA alpha (default: the rank)."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (default 1e-4)."),
    resolution: int | None = typer.Option(None, "--resolution", help="Training side in px (default: the preset's)."),
    text_encoder: bool = typer.Option(False, "--text-encoder", help="Also train LoRAs on the text encoders."),
    preset: str | None = typer.Option(
        None, "--preset", help="Preset whose base is trained: stills-sdxl (default) or a Wan T2V preset."
    ),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default outputs/train/NAME)."),
    seed: int | None = typer.Option(None, "--seed"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    grad_accum: int | None = typer.Option(None, "--grad-accum", help="Micro-batches per optimizer step."),
    checkpoint_every: int | None = typer.Option(None, "--checkpoint-every", help="Checkpoint every K steps."),
    validate_every: int | None = typer.Option(None, "--validate-every", help="Render + score every V steps."),
    validation_prompt: list[str] | None = typer.Option(None, "--validation-prompt", help="Repeatable."),
    validation_steps: int | None = typer.Option(None, "--validation-steps", help="Denoising steps per validation."),
    trigger: str | None = typer.Option(None, "--trigger", help="Rare token the identity is bound to (ohwx)."),
    flip: str | None = typer.Option(None, "--flip", help="auto (off for one-sided anchor details), on, off."),
    prior_dir: Path | None = typer.Option(None, "--prior-dir", help="Class images for prior preservation."),
    min_images: int | None = typer.Option(None, "--min-images", help="Refuse fewer usable images (default 3)."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore checkpoints in the run folder (no resume)."),
) -> None:
    """Train the character's LoRA (SDXL UNet with peft), score likeness every V steps, keep the best checkpoint,
    export diffusers + kohya files and store the LoRA as a new character version. Ctrl-C saves a checkpoint; run
    the same command again to resume exactly."""
    from engine._core.text import printable
    from engine.api import Engine
    from engine.characters.library import slug

    out = out or Path("outputs/train") / slug(name)
    columns = (
        TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )  # fmt: skip
    stopping = "[yellow]stopping: saving a checkpoint (Ctrl-C again to abort at once)[/]"
    with first_ctrl_c_stops(console, stopping) as stop:
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("train", total=None, info="preparing (face check, latent cache)...")

            def progress(step, total, loss, steps_per_s, eta_s):
                bar.update(
                    task, completed=step, total=total,
                    info=f"loss {loss:.4f}  {steps_per_s:.2f} steps/s  ETA {_eta(eta_s)}",
                )  # fmt: skip

            outcome = Engine(settings_from(ctx)).train(
                name, out_dir=out, flags=TRAIN_FLAGS, progress=progress, should_stop=lambda: stop["asked"],
                resume=not fresh, source=source, steps=steps, rank=rank, alpha=alpha, lr=lr,
                resolution=resolution, train_text_encoder=text_encoder or None, preset=preset, seed=seed,
                batch_size=batch_size, grad_accum=grad_accum, checkpoint_every=checkpoint_every,
                validate_every=validate_every, validation_prompts=tuple(validation_prompt) if validation_prompt else None,
                validation_steps=validation_steps, trigger=trigger, flip=flip, prior_dir=prior_dir,
                min_images=min_images,
            )  # fmt: skip
    result = outcome.result
    if outcome.character is None:
        console.print(
            f"[yellow]stopped[/]; checkpoint {escape(printable(result.paths.get('checkpoint', out)))} saved: run the "
            "same command to resume"
        )
        raise typer.Exit(130)
    info = result.info
    if info.get("best_likeness") is None:
        like = f"no face in the validation renders: kept step {info.get('best_step')}"
    else:
        like = f"best likeness {info['best_likeness']:.1f}% at step {info.get('best_step')}"
    console.print(
        f"[green]stored[/] LoRA (rank {info['rank']}, alpha {info['alpha']:g}, {info['steps']} steps; {like}) in "
        f"'{escape(printable(outcome.character.name))}' v{outcome.character.version}"
    )
    for key in ("diffusers_file", "kohya_file", "chart"):
        if result.paths.get(key):
            console.print(f"  {key.replace('_', ' ')}: {escape(printable(result.paths[key]))}")
