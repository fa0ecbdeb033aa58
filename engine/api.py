"""`Engine`: the one Python API. The CLI, the (future) server, job runner and Ray actors are thin
adapters over these methods; all behaviour lives here or below.

Example:
    >>> from engine.api import Engine
    >>> from engine._core.settings import EngineSettings
    >>> eng = Engine(EngineSettings(weights_dir="weights"))
    >>> png = eng.still("tiny-stills-sdxl", "a portrait photo", seed=1, out="outputs/a.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine._core.errors import InputError
from engine._core.settings import EngineSettings

if TYPE_CHECKING:  # heavy imports stay lazy
    from engine.diagnostics.doctor import DoctorReport
    from engine.models.store import WeightsStore
    from engine.pipelines.loading import LoadedPipeline
    from engine.runtime import RuntimePlan


class Engine:
    """Owns settings, the weights store and warm pipelines (kept across calls, keyed by preset)."""

    def __init__(self, settings: EngineSettings | None = None, *, runtime_overrides: dict[str, Any] | None = None):
        self.settings = settings or EngineSettings()
        self.runtime_overrides = dict(runtime_overrides or {})
        self._store: WeightsStore | None = None
        self._pipelines: dict[str, LoadedPipeline] = {}
        self._analyzers = None

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
        from engine.presets import check_components, load_preset

        preset = load_preset(name_or_path, self.settings.presets_dir)
        check_components(preset, self.store.manifest)
        return preset

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

    def still(
        self,
        preset: str,
        prompt: str,
        *,
        out: Path,
        seed: int = 0,
        negative_prompt: str | None = None,
        **overrides,
    ) -> Path:
        """Render one still and save it as a PNG with its full metadata. Returns the PNG path."""
        from engine.outputs import check_output_path, save_png
        from engine.pipelines.render import render_still

        out = check_output_path(out, ".png")  # fail before the render, not after
        result = render_still(self.pipeline(preset), prompt, negative_prompt, seed, **overrides)
        return save_png(out, result.images[0], result.metadata)

    def clip(
        self,
        preset: str,
        prompt: str,
        *,
        out: Path,
        image=None,
        seed: int = 0,
        negative_prompt: str | None = None,
        **overrides,
    ) -> Path:
        """Render one clip (image-to-video when `image` is given) and save an MP4 (24 fps by default)."""
        from engine.outputs import check_output_path, save_mp4
        from engine.pipelines.render import render_clip

        out = check_output_path(out, ".mp4")  # fail before the render, not after
        if isinstance(image, (str, Path)):
            from PIL import Image

            from engine.identity.images import load_image

            image = Image.fromarray(load_image(image))
        result = render_clip(self.pipeline(preset), prompt, image, negative_prompt, seed, **overrides)
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
