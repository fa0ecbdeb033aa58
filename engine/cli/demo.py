"""`flx demo`: the end-to-end demo on the embedded default (what `make demo` runs).

1. doctor; 2. a still and a clip through the real diffusers pipelines on the tiny twins;
3. a character from two photos (quality reports, .flx export -> import -> export, contact sheet);
4. a face-consistency report on a clip with another person spliced in; 5-7. identity stills, a sequence, a LoRA;
8. a job file through the embedded batch queue.
"""

from __future__ import annotations

import io
from pathlib import Path

import typer
from rich.console import Console

from .context import settings_from

console = Console(highlight=False)

STILL_PRESET = "tiny-stills-sdxl"
FACEID_PRESET = "tiny-stills-faceid-sdxl"
INSTANTID_PRESET = "tiny-stills-instantid-sdxl"
TRAIN_PRESET = "tiny-stills-sdxl"
SEQUENCE_PRESET = "tiny-video-wan21-vace-14b-standin"
CLIP_PRESET = "tiny-video-wan21-i2v-480p"
ENCODER = "dlib-resnet-v1"
DEMO_CHARACTER_FILES = (
    "library.sqlite",
    "library.sqlite-wal",
    "library.sqlite-shm",
    "imported.sqlite",
    "imported.sqlite-wal",
    "imported.sqlite-shm",
)


def demo(
    ctx: typer.Context,
    out: Path = typer.Option(Path("outputs/demo"), "--out", help="Where the demo writes its files."),
    faces_dir: Path = typer.Option(Path("../shared/testdata/faces"), "--faces-dir", help="Test photos folder."),
) -> None:
    """Doctor, a tiny still and clip through the real pipelines, a character, and a consistency score."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    from engine._core.atomic import atomic_write_text, ensure_writable_dir
    from engine.api import Engine

    from .doctor import doctor_tables

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    settings = settings_from(ctx)
    out = ensure_writable_dir(out)
    eng = Engine(settings)

    console.rule("1. doctor")
    rec = Console(file=io.StringIO(), record=True, width=120)
    for table in doctor_tables(eng.doctor()):
        console.print(table)
        rec.print(table)
    atomic_write_text(out / "doctor.txt", rec.export_text())

    console.rule("2. still + clip through the real pipelines (tiny random weights: expect noise)")
    with console.status("rendering still..."):
        still = eng.still(
            STILL_PRESET, "studio portrait photo of a person, soft light", seed=7, out=out / "still.png"
        ).path
    console.print(f"[green]still[/] {still} ({STILL_PRESET})")
    with console.status("rendering clip..."):
        clip = eng.clip(
            CLIP_PRESET, "the person turns their head and smiles", image=still, seed=7, out=out / "clip.mp4"
        )
    console.print(f"[green]clip[/]  {clip} ({CLIP_PRESET}, 24 fps, metadata in {clip.with_suffix('.json').name})")

    if not (faces_dir / "obama.jpg").is_file():
        console.print(
            f"[yellow]skipping the character and scoring steps:[/] no test photos in {faces_dir} "
            "(pass --faces-dir to the testdata/faces folder)"
        )
        return
    character = _character_step(settings, out / "character", faces_dir)
    _score_step(settings, out / "score", faces_dir, character)
    _stills_step(settings, out / "stills", out / "character" / "library.sqlite", faces_dir)
    _video_step(settings, out / "video", out / "character" / "library.sqlite")
    _train_step(settings, out / "train", out / "character" / "library.sqlite")
    _batch_step(settings, out / "batch", out / "character" / "library.sqlite")
    console.rule("done")
    console.print(f"everything is in {out}/")


def _character_step(settings, out: Path, faces_dir: Path):
    from engine._core.atomic import ensure_writable_dir
    from engine.api import Engine
    from engine.characters import read_flx
    from engine.characters.contact_sheet import write_reference_sheet

    from .character import print_quality

    console.rule("3. character: create, quality, .flx round trip, contact sheet")
    out = ensure_writable_dir(out)
    for name in DEMO_CHARACTER_FILES:  # only the demo's own files: a fresh library each run
        (out / name).unlink(missing_ok=True)
    chars = Engine(settings.model_copy(update={"library_path": out / "library.sqlite"})).characters
    ch = chars.create(
        "demo-person",
        [faces_dir / "obama.jpg", faces_dir / "obama2.jpg"],
        profile=Path(settings.presets_dir).parent / "examples" / "profile.yaml",
        encoder=ENCODER,
    )
    for ref in ch.references:
        print_quality(ref.source_filename, ref.quality)
    emb = ch.embeddings[ENCODER]
    console.print(
        f"character [bold]{ch.name}[/] v{ch.version} ({ch.id}): {len(ch.references)} references, "
        f"leave-one-out distances {[round(d, 3) for d in emb.leave_one_out_distances if d is not None]}"
        f" (threshold {emb.threshold})"
    )
    first = chars.export(ch.id, out / "demo-person.flx")
    imported = Engine(settings.model_copy(update={"library_path": out / "imported.sqlite"})).characters
    imported.import_path(first)
    again = imported.export(ch.id, out / "demo-person.reexported.flx")
    same = first.read_bytes() == again.read_bytes()
    console.print(
        f".flx export -> import -> export byte-identical: {'[green]yes[/]' if same else '[red]NO[/]'} "
        f"({first.stat().st_size / 1024:.0f} KiB)"
    )
    sheet = write_reference_sheet(read_flx(first).character, out / "references.png")
    console.print(f"[green]contact sheet[/] {sheet}")
    return ch


def _score_step(settings, out: Path, faces_dir: Path, character) -> None:
    from engine.api import Engine
    from engine.characters import identity_reference
    from engine.scoring.demo import run_score_demo

    console.rule("4. face-consistency score of a clip with another person spliced in")
    analyzer = Engine(settings).analyzer(ENCODER)
    run_score_demo(
        faces_dir,
        out,
        reference=identity_reference(character, analyzer.info),
        analyzer=analyzer,
        echo=console.print,
    )
    console.print(f"[green]report, plot and worst-frames sheet[/] in {out}/")


def _stills_step(settings, out: Path, library: Path, faces_dir: Path) -> None:
    """Identity stills of the demo character (FaceID-Plus-v2 and InstantID on the tiny twins), a two-character
    still, and the character pack's contact sheet."""
    from engine._core.atomic import ensure_writable_dir
    from engine.api import Engine
    from engine.identity.registry import manifest_encoders

    console.rule("5. identity stills: FaceID-Plus-v2, InstantID, two characters, the character pack")
    out = ensure_writable_dir(out)
    eng = Engine(settings.model_copy(update={"library_path": library}))
    twins = {}
    for preset in (FACEID_PRESET, INSTANTID_PRESET):
        face = eng.preset(preset).components.face_analysis
        twins[preset] = next(
            e for e, spec in manifest_encoders(eng.store.manifest).items() if spec.component_id == face
        )
    eng.characters.create("demo-friend", [faces_dir / "biden.jpg"], encoder=ENCODER)
    for name in ("demo-person", "demo-friend"):
        for encoder in twins.values():  # each method's encoder (here the tiny ArcFace twins)
            eng.characters.reembed(name, encoder)
    for preset, file in ((FACEID_PRESET, "faceid.png"), (INSTANTID_PRESET, "instantid.png")):
        with console.status(f"rendering {preset}..."):
            outcome = eng.still(
                preset, "studio portrait photo, soft light", out=out / file, characters=["demo-person"]
            )
        _say(outcome, preset)
    with console.status("rendering two characters..."):
        two = eng.still(
            INSTANTID_PRESET,
            "[char1] and [char2] talking in a cafe",
            out=out / "two-characters.png",
            characters=["demo-person", "demo-friend"],
            width=192,
            height=108,
        )
    _say(two, INSTANTID_PRESET + ", 192x108 from the nearest bucket")
    with console.status("rendering the character pack (8 shots x 2 candidates)..."):
        result = eng.pack("demo-person", out_dir=out / "pack", candidates=2, preset=INSTANTID_PRESET)
    console.print(
        f"[green]pack[/] stored in demo-person v{result.character.version}; contact sheet {result.sheet} "
        "(tiny random weights draw no faces: every score is 0, as it should be)"
    )


def _say(outcome, what: str) -> None:
    for c in outcome.candidates:
        score = c.score.score if c.score is not None else None
        console.print(f"[green]still[/] {c.path} ({what}); consistency {score}% (noise has no face)")


def _video_step(settings, out: Path, library: Path) -> None:
    """A 2-segment sequence of the demo character with Stand-In reference attention (VACE continuation), stitched
    at 24 fps, with its consistency report."""
    from engine._core.atomic import ensure_writable_dir
    from engine.api import Engine
    from engine.shots.sequence import SequenceSpec

    console.rule("6. video: a 2-segment sequence with reference attention (Stand-In on VACE), 24 fps")
    out = ensure_writable_dir(out)
    eng = Engine(settings.model_copy(update={"library_path": library}))
    spec = SequenceSpec(
        preset=SEQUENCE_PRESET,
        character="demo-person",
        segment_seconds=1.0,
        shots=[{"prompt": "walks along a beach at dusk", "seconds": 2.0, "motion": "medium"}],
        drift={"min_score": 50.0, "retries": 1, "reanchor": True},
    )
    with console.status("rendering the sequence (2 segments, drift guard on)..."):
        result = eng.sequence(spec, out=out / "sequence.mp4")
    for r in result.segments:
        score = "no face" if not r.get("score") else f"{r['score']:.1f}%"
        how = "reused" if r.get("reused") else f"{len(r['attempts'])} attempt(s)"
        console.print(f"  segment {r['index']}: {score}, {how}, continues from {r['continues_from'] or 'the start'}")
    console.print(
        f"[green]sequence[/] {result.path} (24 fps); report {result.report_path} "
        "(tiny random weights draw no faces, so every segment drifts and the guard retries: as it should)"
    )


def _train_step(settings, out: Path, library: Path) -> None:
    """A few steps of character-LoRA training on the tiny SDXL twin (the demo character's reference crops: its pack
    is noise from random weights), stored as a new character version, then a still rendered with that LoRA."""
    from engine._core.atomic import ensure_writable_dir
    from engine.api import Engine

    console.rule("7. character LoRA: train a few steps (likeness tracked), store it, render a still with it")
    out = ensure_writable_dir(out)
    eng = Engine(settings.model_copy(update={"library_path": library}))
    with console.status("training (8 steps, validation every 4)..."):
        outcome = eng.train(
            "demo-person", out_dir=out / "run", preset=TRAIN_PRESET, source="refs", min_images=2, steps=8, rank=4,
            lr=1e-3, checkpoint_every=4, validate_every=4, validation_steps=4, resume=False,
        )  # fmt: skip
    info = outcome.result.info
    for k in ("diffusers_file", "kohya_file", "chart"):
        console.print(f"  {k.replace('_', ' ')}: {outcome.result.paths[k]}")
    console.print(
        f"[green]LoRA[/] rank {info['rank']}, {info['steps']} steps, final loss {info['final_loss']:.4f}, stored in "
        f"demo-person v{outcome.character.version}"
    )
    with console.status("rendering a still with the LoRA..."):
        still = eng.still(
            TRAIN_PRESET, "studio portrait photo", out=out / "lora-still.png", characters=["demo-person"],
            character_lora=1.0,
        )  # fmt: skip
    _say(still, TRAIN_PRESET + " + the character's LoRA")


def _batch_step(settings, out: Path, library: Path) -> None:
    """configs/examples/demo-batch.yaml (a pack, two stills, a short sequence) through the embedded queue: the
    job store and the outputs manifest, as `flx batch run` writes them."""
    from engine._core.atomic import ensure_writable_dir
    from engine._core.settings import repo_root
    from engine.api import Engine
    from engine.jobs.runner import run_batch
    from engine.jobs.specs import load_job
    from engine.jobs.store import JobStore

    console.rule("8. batch: a job file (pack, two stills, a sequence) through the embedded queue")
    out = ensure_writable_dir(out)
    eng = Engine(settings.model_copy(update={"library_path": library}))
    job_file = repo_root() / "configs" / "examples" / "demo-batch.yaml"

    def progress(event: str, data: dict) -> None:
        if event == "end":
            score = data.get("score")
            what = data["status"] if data["status"] != "failed" else f"failed: {data.get('error')}"
            console.print(f"  {data['shot']}: {what}" + (f" (consistency {score:.1f}%)" if score is not None else ""))
        elif event == "skip":
            console.print(f"  {data['shot']}: done earlier (same content key)")

    with JobStore(out / "jobs.sqlite") as store, console.status("running the batch..."):
        batch_id = store.submit(load_job(job_file), out_dir=out / "outputs", source=str(job_file))
        info = run_batch(eng, store, batch_id, progress=progress)
    console.print(
        f"[green]batch[/] {info.name}: {info.status} ({', '.join(f'{n} {k}' for k, n in info.counts.items())}); "
        f"manifest {out / 'outputs' / 'manifest.json'}"
    )
