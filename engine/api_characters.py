"""`CharacterAPI`: character library work (create, version, exchange) as methods of the `Engine`.

Reached as `Engine(settings).characters`; the CLI (`flx character ...`), the job runner, the server and Ray actors
call these methods and nothing below them.

Example:
    >>> from engine.api import Engine
    >>> chars = Engine(settings).characters
    >>> ch = chars.create("ava", ["ava1.jpg", "ava2.jpg:0.5"])
    >>> data = chars.export_bytes("ava")  # a .flx, for a download or a Ray payload
    >>> Engine(other_settings).characters.import_bytes(data, source="ava.flx").status
    'added'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine._core.errors import InputError
from engine.characters.library import ImportResult

if TYPE_CHECKING:
    from engine.api import Engine
    from engine.characters import Character, CharacterProfile, CharacterSummary, LoadedFlx, RefSpec, VersionInfo

REACTOR_ENCODER = "arcface-buffalo_l-w600k_r50"  # = engine.characters.reactor.DEFAULT_ENCODER (kept import-light)
MAX_SOURCE_LABEL = 200  # characters of an upload's name kept for messages


@dataclass(frozen=True)
class ImportedFile(ImportResult):
    """An `ImportResult` with the reader's warnings (a newer minor format version, ...).

    Files imported from a folder carry `warnings=()`: the reader logs theirs (`engine.characters.flx_format`)."""

    warnings: tuple[str, ...] = ()


class CharacterAPI:
    """The one public surface for characters, owned by an `Engine` (`engine.characters`).

    Why it exists: the CLI used to call `engine.characters` and the analyzer registry itself, so the server, the
    job runner and Ray actors would each have re-assembled the same steps (parse references, load the analyzer,
    open the library, store the version) and drifted apart. Here each verb is one thin method over the functions
    of `engine.characters`: every front end gets the same checks and messages, and a worker keeps one warm
    `Engine` whose face analyzers (`Engine.analyzer`, one per encoder) serve every call.

    Each call opens the library for itself (`with engine.library() as lib:`): the object holds no connection, so it
    may be shared by threads. Versions are immutable; every change returns the new version.
    """

    def __init__(self, engine: Engine):
        self._engine = engine

    @property
    def settings(self):
        return self._engine.settings

    # ------------------------------------------------------------------------------------------ reading

    def list(
        self, *, search: str | None = None, tag: str | None = None, include_archived: bool = False
    ) -> list[CharacterSummary]:
        """Characters sorted by name; `search` is a case-insensitive name substring, `tag` an exact tag."""
        with self._engine.library() as lib:
            return lib.list(search=search, tag=tag, include_archived=include_archived)

    def get(self, name_or_id: str, version: int | None = None) -> Character:
        """A character (latest version, or `version`) by name or id, blobs attached (a private copy)."""
        with self._engine.library() as lib:
            return lib.get(name_or_id, version)

    def log(self, name_or_id: str) -> list[VersionInfo]:
        """Every stored version, oldest first."""
        with self._engine.library() as lib:
            return lib.log(name_or_id)

    def summary(self, name_or_id: str) -> CharacterSummary:
        with self._engine.library() as lib:
            return lib.summary(name_or_id)

    def inspect(self, path: str | Path) -> dict:
        """A summary of a `.flx` file (verified, not imported): identity, encoders, references, lineage, warnings."""
        from engine.characters import inspect_flx

        return inspect_flx(path)

    # ------------------------------------------------------------------------------------------ versions

    def create(
        self,
        name: str,
        refs: Iterable[str | Path | RefSpec],
        *,
        face: int | None = None,
        profile: CharacterProfile | dict | str | Path | None = None,
        encoder: str | None = None,
        force: bool = False,
    ) -> Character:
        """Create a character from reference photos and store it (version 1).

        Args:
            name (`str`): library name (checked free before any photo is analysed).
            refs: photo paths, `photo.jpg[:weight]` strings or `RefSpec`s.
            face (`int`, *optional*): which face to use in photos that show several (applies to all of them).
            profile (`CharacterProfile`, `dict` or a YAML/JSON path, *optional*): the written look.
            encoder (`str`, *optional*): identity encoder id (default `dlib-resnet-v1`).
            force (`bool`, *optional*, defaults to `False`): keep references that look like a different person.
        """
        from engine.characters import create_in_library

        specs = _ref_specs(refs, face)
        prof = _profile(profile)
        analyzer = self._engine.analyzer(encoder)
        with self._engine.library() as lib:
            return create_in_library(lib, name, specs, analyzer, profile=prof, force=force)

    def add_references(
        self,
        name_or_id: str,
        refs: Iterable[str | Path | RefSpec],
        *,
        face: int | None = None,
        force: bool = False,
        encoder: str | None = None,
    ) -> Character:
        """A new version with more reference photos merged into each of the character's embeddings.

        `encoder` (default: `dlib-resnet-v1` when the character has it, else its first encoder) detects the faces
        and refuses a new photo of a different person unless `force`, as `create` does; the character's other
        encoders embed the new crops like `reembed` (each needs its analyzer on this machine).
        """
        from engine.characters.service import add_references
        from engine.identity.registry import DEFAULT_ENCODER

        specs = _ref_specs(refs, face)
        with self._engine.library() as lib:
            ch = lib.get(name_or_id)
            first = encoder or (
                DEFAULT_ENCODER if DEFAULT_ENCODER in ch.embeddings else min(ch.embeddings, default="")
            )
            order = [first, *sorted(e for e in ch.embeddings if e != first)]
            analyzers = [self._engine.analyzer(e) for e in order if e]
            return lib.add(add_references(ch, specs, analyzers, force=force))

    def variant(self, base: str, name: str, *, wardrobe: str | None = None, notes: str | None = None) -> Character:
        """A new character with `base`'s identity and its own wardrobe/notes (`parent` records the base)."""
        from engine.characters import variant_in_library

        with self._engine.library() as lib:
            return variant_in_library(lib, base, name, wardrobe=wardrobe, notes=notes)

    def update_profile(
        self, name_or_id: str, changes: dict, *, profile: CharacterProfile | dict | str | Path | None = None
    ) -> Character:
        """A new version with profile fields changed. `profile` (a profile, dict or YAML/JSON file) sets the fields
        it names first; `changes` go over it."""
        from engine.characters import update_profile_in_library

        if not isinstance(changes, dict):
            raise InputError(f"profile changes must be a mapping of field: value (got {type(changes).__name__})")
        merged: dict = {}
        if profile is not None:
            merged.update(_profile(profile).model_dump(exclude_unset=True))
        merged.update(changes)
        with self._engine.library() as lib:
            return update_profile_in_library(lib, name_or_id, merged)

    def rename(self, old: str, new: str) -> Character:
        """Rename (a new version with the new name; older versions keep the old one)."""
        with self._engine.library() as lib:
            return lib.rename(old, new)

    def delete(self, name_or_id: str) -> CharacterSummary:
        """Remove a character and all its versions; returns what was removed."""
        with self._engine.library() as lib:
            return lib.delete(name_or_id)

    def reembed(self, name_or_id: str, encoder: str) -> Character:
        """A new version with embeddings for `encoder`, computed from the stored reference crops."""
        from engine.characters import reembed_in_library

        analyzer = self._engine.analyzer(encoder)
        with self._engine.library() as lib:
            return reembed_in_library(lib, name_or_id, analyzer)

    def archive(self, days: int, out_dir: str | Path | None = None) -> list[Path]:
        """Export characters unused for more than `days` to `.flx` files (default `<home>/archive`), then hide them."""
        with self._engine.library() as lib:
            return lib.archive_inactive(days, out_dir or Path(self.settings.home) / "archive")

    # ------------------------------------------------------------------------------------------ exchange

    def export(
        self, name_or_id: str, out: str | Path, *, version: int | None = None, include_references: bool = True
    ) -> Path:
        """Write one version to a `.flx` file (atomically)."""
        with self._engine.library() as lib:
            return lib.export(name_or_id, out, version=version, include_references=include_references)

    def export_bytes(self, name_or_id: str, *, version: int | None = None, include_references: bool = True) -> bytes:
        """The bytes `export` would write (the same writer): for HTTP downloads and Ray payloads."""
        from engine.characters import to_bytes

        with self._engine.library() as lib:
            ch = lib.get(name_or_id, version)
        return to_bytes(ch, include_references=include_references)

    def export_all(self, out_dir: str | Path, *, include_references: bool = True) -> list[Path]:
        """Every active character's latest version as `<name>.flx` in `out_dir`."""
        with self._engine.library() as lib:
            return lib.export_all(out_dir, include_references=include_references)

    def import_path(self, path: str | Path) -> list[ImportResult]:
        """Import a `.flx` file or a folder of them (each verified first; all or nothing).

        Returns `ImportedFile`s; a single file's carry the reader's warnings."""
        from engine.characters import read_flx

        p = Path(path)
        if p.is_dir():
            with self._engine.library() as lib:
                return [ImportedFile(**_fields(r)) for r in lib.import_dir(p)]
        loaded = read_flx(p)  # the file reader: size and header checked before the body is read
        return [self._store(loaded, p.name)]

    def import_bytes(self, data: bytes, *, source: str) -> ImportedFile:
        """Import `.flx` bytes (an upload, a Ray payload) through the same verifying reader as files.

        Args:
            data (`bytes`): the file's bytes (size limit, header, tensors and checksum are checked before anything
                is stored; nothing is written when they are invalid).
            source (`str`): what to call it in messages and in the result (e.g. the upload's file name).

        Raises:
            `CharacterFileError`: the bytes are not a valid `.flx`. `InputError`: the name is taken, or the same
                version exists with other content.
        """
        from engine._core.text import printable
        from engine.characters import from_bytes

        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InputError(f"import_bytes takes the file's bytes (got {type(data).__name__})")
        label = printable(source if isinstance(source, str) else "", limit=MAX_SOURCE_LABEL).strip() or "<upload>"
        return self._store(from_bytes(bytes(data), source=label), label)

    def _store(self, loaded: LoadedFlx, source: str) -> ImportedFile:
        with self._engine.library() as lib:
            result = lib.import_character(loaded.character, source)
        return ImportedFile(**_fields(result), warnings=tuple(loaded.warnings))

    def export_reactor(
        self, name_or_id: str, out: str | Path, *, encoder: str = REACTOR_ENCODER, version: int | None = None
    ) -> Path:
        """Write the character's ArcFace (buffalo_l) identity as a ReActor face model `.safetensors`."""
        from engine.characters import export_reactor

        with self._engine.library() as lib:
            ch = lib.get(name_or_id, version)
        return export_reactor(ch, out, encoder_id=encoder)

    def import_reactor(self, file: str | Path, name: str, *, encoder: str = REACTOR_ENCODER) -> Character:
        """Store a ReActor face model as an embedding-only character (no reference photos; never unpickles)."""
        from engine.characters import import_reactor

        info = self._engine.analyzer(encoder).info  # the encoder's model hash is recorded with the vector
        ch = import_reactor(file, name, info)
        with self._engine.library() as lib:
            return lib.add(ch)


def _fields(result: ImportResult) -> dict[str, Any]:
    return {f.name: getattr(result, f.name) for f in fields(ImportResult)}


def _ref_specs(refs: Any, face: int | None) -> list[RefSpec]:
    """Reference photos as `RefSpec`s; `face` (when given) picks the face in every photo that shows several."""
    import dataclasses

    from engine.characters import RefSpec, parse_ref_spec

    if isinstance(refs, (str, Path, RefSpec)):
        refs = [refs]
    if face is not None and (isinstance(face, bool) or not isinstance(face, int) or face < 0):
        raise InputError(f"face must be a face number from 0 (got {face!r}): see the list the refusal printed")
    specs = []
    for r in refs:
        if isinstance(r, str):
            s = parse_ref_spec(r)
        elif isinstance(r, RefSpec):
            s = r
        elif isinstance(r, Path):
            s = RefSpec(r)
        else:
            raise InputError(f"a reference photo is a path or 'photo.jpg:weight' (got {type(r).__name__})")
        specs.append(s if face is None else dataclasses.replace(s, face_index=face))
    return specs


def _profile(profile: Any) -> CharacterProfile | None:
    from pydantic import ValidationError

    from engine.characters import CharacterProfile, load_profile
    from engine.characters.schema import first_error

    if profile is None or isinstance(profile, CharacterProfile):
        return profile
    if isinstance(profile, (str, Path)):
        return load_profile(profile)
    if isinstance(profile, dict):
        try:
            return CharacterProfile.model_validate(profile)
        except ValidationError as e:
            raise InputError(f"profile {first_error(e)}") from None
    raise InputError(f"a profile is a mapping of fields or a YAML/JSON file (got {type(profile).__name__})")
