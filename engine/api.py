"""`Engine`: the one Python API. The CLI, the (future) server, job runner and Ray actors are thin
adapters over these methods; all behaviour lives here or below.

Example:
    >>> from engine.api import Engine
    >>> from engine._core.settings import EngineSettings
    >>> eng = Engine(EngineSettings(weights_dir="weights"))
    >>> png = eng.still("tiny-stills-sdxl", "a portrait photo", seed=1, out="outputs/a.png").path
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine._core.errors import InputError
from engine._core.settings import EngineSettings

if TYPE_CHECKING:  # heavy imports stay lazy
    from engine.api_characters import CharacterAPI
    from engine.diagnostics.doctor import DoctorReport
    from engine.models.store import WeightsStore
    from engine.pipelines.loading import LoadedPipeline
    from engine.runtime import RuntimePlan
    from engine.shots.still import StillOutcome


class Engine:
    """Owns settings, the weights store and warm pipelines (kept across calls, keyed by preset)."""

    def __init__(self, settings: EngineSettings | None = None, *, runtime_overrides: dict[str, Any] | None = None):
        self.settings = settings or EngineSettings()
        self.runtime_overrides = dict(runtime_overrides or {})
        self._store: WeightsStore | None = None
        self._pipelines: dict[str, LoadedPipeline] = {}
        self._analyzers = None
        # (character id, version, encoder id, model sha256) -> the stills pipelines' IdentityInput: the face crop
        # and keypoints of a character version are prepared once per warm Engine, not per shot
        self._identity_inputs: dict[tuple, object] = {}
        self._presets: dict[str, tuple] = {}
        self._characters: dict[tuple, object] = {}
        self._templates: tuple | None = None

    # ----- weights --------------------------------------------------------------------------
    @property
    def store(self) -> WeightsStore:
        if self._store is None:
            from engine.models.store import WeightsStore

            self._store = WeightsStore(self.settings)
        return self._store

    def fetch_weights(self, component_ids: list[str], *, force: bool = False) -> list[str]:
        from engine.models.fetch import fetch

        return [fetch(self.store, cid, force=force).revision for cid in component_ids]

    def verify_weights(self, component_ids: list[str] | None = None):
        return self.store.verify(component_ids)

    def import_weights(self, path: Path, component_id: str | None = None) -> list[str]:
        from engine.models.fetch import import_weights

        return import_weights(self.store, Path(path), component_id)

    def doctor(self) -> DoctorReport:
        from engine.diagnostics.doctor import run_doctor

        return run_doctor(self.settings)

    # ----- pipelines ------------------------------------------------------------------------
    def preset(self, name_or_path: str):
        """A validated preset; a warm Engine re-reads the file only when it changed (size or mtime)."""
        from engine.presets import check_components, load_preset, preset_file

        path = preset_file(name_or_path, self.settings.presets_dir)
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        cached = self._presets.get(str(name_or_path))
        if cached is not None and cached[0] == key:
            return cached[1]
        preset = load_preset(name_or_path, self.settings.presets_dir)
        check_components(preset, self.store.manifest)
        self._presets[str(name_or_path)] = (key, preset)
        return preset

    def presets(self) -> list[dict[str, Any]]:
        """Every preset in the presets folder that validates: name, kind (`still` or `video`), pipeline and whether
        it conditions on identity. Broken preset files are left out (`flx doctor` names them)."""
        from engine._core.errors import EngineError
        from engine.presets import IDENTITY_PIPELINES, list_presets

        out = []
        for name in list_presets(self.settings.presets_dir):
            try:
                p = self.preset(name)
            except EngineError:
                continue
            video = p.pipeline.startswith("wan")
            identity = p.pipeline in IDENTITY_PIPELINES or bool(getattr(p.components, "reference", None))
            out.append({"name": name, "kind": "video" if video else "still", "pipeline": p.pipeline,
                        "identity": identity})  # fmt: skip
        return out

    def prompt_templates(self):
        """`configs/prompts.yaml`, read once per Engine (re-read when the file changes)."""
        from engine.prompts import default_prompts_path, load_prompt_templates

        path = default_prompts_path()
        st = path.stat()
        key = (st.st_size, st.st_mtime_ns)
        if self._templates is None or self._templates[0] != key:
            self._templates = (key, load_prompt_templates(path))
        return self._templates[1]

    def plan(self, preset) -> RuntimePlan:
        from engine.runtime import plan_runtime

        return plan_runtime(preset.vram_gb, self.settings.device, **self.runtime_overrides)

    def pipeline(self, preset_name: str) -> LoadedPipeline:
        """A loaded pipeline for the preset, reused across calls (warm)."""
        if preset_name not in self._pipelines:
            from engine.pipelines.loading import load_pipeline

            preset = self.preset(preset_name)
            self._pipelines[preset_name] = load_pipeline(preset, self.store, self.plan(preset))
        return self._pipelines[preset_name]

    def loaded_presets(self) -> list[str]:
        """Presets whose pipelines are loaded (warm) in this Engine."""
        return list(self._pipelines)

    def release_pipelines(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Unload every warm pipeline not in `keep` (a batch runner calls it when it moves to shots of other
        presets, so one GPU never holds models no remaining shot needs). Returns the released preset names."""
        released = [name for name in self._pipelines if name not in keep]
        for name in released:
            del self._pipelines[name]
        if released:
            import gc

            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return released

    def still(self, preset: str, prompt: str, *, out: Path, seed: int = 0, **shot) -> StillOutcome:
        """Render a still shot (0-4 characters, 1-16 candidates), score each candidate and write the PNGs.

        `shot` takes the fields of `engine.shots.still.StillShot` (characters, negative_prompt, candidates, width,
        height, steps, guidance, scheduler, identity_strength, identity_scale, ..., layout). Returns the written
        candidates with their scores; `.path` is the best one.
        """
        from engine.shots.still import render_still_shot, shot_from_flags

        spec = shot_from_flags({}, preset=preset, prompt=prompt, seed=seed, **shot)
        return render_still_shot(self, spec, out)

    def video(self, preset: str, prompt: str, *, out: Path, flags: dict[str, str] | None = None, **shot):
        """Render one clip of a character (`engine.shots.video.VideoShot` fields): composed prompt, reference
        attention where the preset has it, 24 fps MP4 with metadata, consistency report. Returns a `VideoOutcome`.
        `flags` maps field names to the CLI flags that set them, so a refusal names the flag the user typed."""
        from engine.shots.video import render_video_shot, shot_from_values

        return render_video_shot(self, shot_from_values(flags, preset=preset, prompt=prompt, **shot), out)

    def sequence(self, spec_or_path, *, out: Path):
        """Render a sequence file (`engine.shots.sequence`): chained segments with a drift guard, stitched to one
        MP4 and a report. Finished segments are reused on a re-run."""
        from engine.shots.sequence import SequenceSpec, load_sequence, run_sequence

        spec = spec_or_path if isinstance(spec_or_path, SequenceSpec) else load_sequence(spec_or_path)
        return run_sequence(self, spec, out)

    def pack(
        self, name: str, *, out_dir: Path, candidates: int = 4, preset: str | None = None, seed: int = 0, shots=None
    ):
        """Render the character pack (configs/pack.yaml), keep the best candidate per shot, store it as a new
        version of the character and write a contact sheet (`engine.shots.pack`)."""
        from engine.shots.pack import make_pack

        return make_pack(self, name, candidates=candidates, preset=preset, seed=seed, out_dir=out_dir, shots=shots)

    def train(
        self,
        name: str,
        *,
        out_dir: Path,
        flags: dict[str, str] | None = None,
        progress=None,
        should_stop=None,
        resume: bool = True,
        **spec,
    ):
        """Train the character's identity LoRA (`engine.training.spec.TrainSpec` fields: source, steps, rank,
        alpha, lr, resolution, train_text_encoder, preset, ...), track likeness while it trains, keep the
        best-likeness checkpoint and store the LoRA as a new character version. A run stopped by `should_stop`
        (Ctrl-C) or a crash resumes from its last checkpoint in `out_dir`. Returns a `TrainOutcome`."""
        from engine.shots.train import train_character
        from engine.training.spec import spec_from_values

        train_spec = spec_from_values(flags, **spec)
        return train_character(
            self, name, train_spec, Path(out_dir), progress=progress, should_stop=should_stop, resume=resume
        )

    def character(self, spec: str):
        """A character by library name/id or `.flx` path (the file is verified; the library is not touched).

        Library characters are parsed once per version and shared by a warm Engine: treat them as read-only (every
        change makes a new version with `Character.next_version`, which copies)."""
        from engine.characters import read_flx

        p = Path(spec)
        if p.suffix.lower() == ".flx" or p.is_file():
            return read_flx(p).character
        with self.library() as lib:
            head = lib.head(spec)  # the latest version's id + sha256: parsed once per warm Engine
            if head not in self._characters:
                self._characters[head] = lib.get(head[0])
            return self._characters[head]  # shared: versions are immutable (change one with `next_version`)

    def clip(
        self,
        preset: str,
        prompt: str,
        *,
        out: Path,
        image=None,
        end_image=None,
        seed: int = 0,
        negative_prompt: str | None = None,
        **overrides,
    ) -> Path:
        """Render one clip (image-to-video when `image` is given; first + last frame with `end_image` where the
        model supports it) and save an MP4 (24 fps by default)."""
        from engine.outputs import check_output_path, save_mp4
        from engine.pipelines.render import render_clip

        out = check_output_path(out, ".mp4")  # fail before the render, not after

        def pil(x):
            if isinstance(x, (str, Path)):
                from PIL import Image

                from engine.identity.images import load_image

                return Image.fromarray(load_image(x))
            return x

        result = render_clip(
            self.pipeline(preset), prompt, pil(image), negative_prompt, seed, last_image=pil(end_image), **overrides
        )
        return save_mp4(out, result.frames, fps=result.fps, metadata=result.metadata)

    # ----- characters and scoring -------------------------------------------------------------
    def analyzer(self, encoder_id: str | None = None):
        """A face analyzer, kept warm per encoder id. Manifest encoders load their own pack from the weights store
        (verified; refused when absent, never replaced by another component)."""
        if self._analyzers is None:
            from engine.identity.registry import AnalyzerCache

            self._analyzers = AnalyzerCache(self.settings)
        return self._analyzers.get(encoder_id)

    def library(self):
        """The character library (a context manager; open one per thread)."""
        from engine.characters import open_library

        return open_library(self.settings)

    @property
    def characters(self) -> CharacterAPI:
        """Character library work (create, add references, versions, export/import): `engine.api_characters`.
        Created once per Engine, on first use; it shares this Engine's warm analyzers."""
        api = self.__dict__.get("_character_api")
        if api is None:
            from engine.api_characters import CharacterAPI

            api = self.__dict__["_character_api"] = CharacterAPI(self)
        return api

    def character_reference(self, spec: str, info, *, touch: bool = True):
        """`NAME`, id or `FILE.flx` -> (IdentityReference for the encoder `info` describes, source).

        The character's embedding must come from the same encoder and model file as `info` (else `InputError` with
        the `reembed` fix). Library use counts as use (`touch`).
        """
        from engine.characters import identity_reference, identity_reference_from_library, read_flx

        p = Path(spec)
        if p.suffix.lower() == ".flx" or p.is_file():
            return identity_reference(read_flx(p).character, info), f"file:{p}"
        with self.library() as lib:
            ref = identity_reference_from_library(lib, spec, info, touch=touch)
        return ref, f"library:{self.settings.library_file}"

    def score(
        self,
        media: list[Path],
        *,
        character: str | None = None,
        reference_photos: list[Path] | None = None,
        protocol: str = "full",
        encoder_id: str | None = None,
        options=None,
        sequence: bool = False,
        collector=None,
        force: bool = False,
    ):
        """Face-consistency report for `media` against a character (or reference photos, merged like a character's
        references: `force` keeps photos that look like another person)."""
        from engine.scoring import reference_from_photos, score_media

        if protocol not in ("full", "opens2v"):  # before any model loads
            raise InputError(f"unknown protocol '{protocol}': use full or opens2v")
        if bool(character) == bool(reference_photos):
            raise InputError("give exactly one of --character NAME|FILE.flx or --reference-photo PATH (repeatable)")
        analyzer = self.analyzer(encoder_id)
        if character:
            reference, source = self.character_reference(character, analyzer.info)
        else:
            reference = reference_from_photos(reference_photos, analyzer, force=force)
            source = "photos:" + ",".join(str(p) for p in reference_photos)
        report = score_media(
            media,
            reference,
            analyzer,
            protocol,
            options,
            sequence=sequence,
            collector=collector,
            reference_source=source,
        )
        return report.model_copy(update={"commercial_use": bool(self.settings.commercial_use)})
