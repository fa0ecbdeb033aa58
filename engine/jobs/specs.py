"""Job files: a studio's batch of shots in one YAML (or JSON) document, checked before any GPU time is spent.

```yaml
version: 1
name: season-1                  # the batch's name (a file-safe word): its store row and default output folder
output: outputs/season-1        # optional; `flx batch run --out` overrides; relative to the job file
characters:                     # aliases used by the shots: a library name/id or a .flx path
  mara: Mara
  theo: characters/theo.flx
defaults:                       # per kind: keys every shot of that kind starts from
  still: {preset: stills-faceid-sdxl, steps: 30, candidates: 2}
shots:
  - {id: mara-pack, kind: pack, character: mara, candidates: 4}
  - {id: cafe, kind: still, characters: [mara, theo], prompt: "[char1] and [char2] in a cafe", seed: 7}
  - {id: walk, kind: sequence, character: mara, preset: video-wan21-vace-14b-standin, shots: [{prompt: walks}]}
  - {id: lora, kind: train, character: mara, preset: stills-sdxl, steps: 800}
  - {id: qc, kind: score, character: mara, media: [renders/*.mp4]}
```

A shot's own keys are checked by the schema that renders it (`StillShot`, `VideoShot`, `SequenceSpec`,
`TrainSpec`, `PackArgs`, `ScoreArgs`): one source for every bound, whether a value comes from a flag, a sequence
file or a job file. A shot without `seed` gets one derived from the job name and the shot id (stable across runs,
different per shot). Errors are one `ConfigError` naming the file, the line, the key and the allowed values.
"""

from __future__ import annotations

import glob as globlib
import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine._core.errors import ConfigError, InputError

JOB_FORMAT = 1
MAX_SHOTS = 1000
MAX_MEDIA = 1000
KINDS = ("still", "pack", "video", "sequence", "train", "score")
STAGES = {"pack": 0, "train": 0, "still": 1, "video": 1, "sequence": 1, "score": 2}
"""Shots run stage by stage: packs and LoRAs first (later shots use the character versions they make), renders,
then scoring. Inside a stage shots are grouped by preset (fewest model swaps); stage 0 keeps the file order."""

_WORD = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Word = Annotated[str, Field(pattern=_WORD, description="Letters, digits, '.', '_' and '-' (a safe file name).")]
_BASE_KEYS = ("id", "kind", "seed", "output", "character", "characters")


def derived_seed(job_name: str, shot_id: str) -> int:
    """The seed of a shot that names none: stable for the same job and shot id, different across shots."""
    digest = hashlib.sha256(f"flx-seed/{job_name}/{shot_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**31)


class JobShot(BaseModel):
    """One entry of `shots:`: the common keys; every other key belongs to the kind's own schema."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    id: Word = Field(description="Unique in the job: the shot's output folder and its row in the job store.")
    kind: Literal["still", "pack", "video", "sequence", "train", "score"]
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Default: derived from the job name and id.")
    output: Word | None = Field(None, description="File name stem of the shot's main output (default: the id).")
    character: str | None = Field(None, max_length=200, description="Alias from `characters:` (one character).")
    characters: list[str] | None = Field(None, max_length=4, description="Aliases (stills: up to 4).")

    def params(self) -> dict[str, Any]:
        """The kind-specific keys (everything but the common ones)."""
        return dict(self.model_extra or {})

    def aliases(self) -> list[str]:
        if self.characters is not None:
            return list(self.characters)
        return [self.character] if self.character else []


class JobFile(BaseModel):
    """A job document (file or HTTP body)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    version: Literal[1] = 1
    name: Word = Field(description="The batch's name: its store row and default output folder.")
    output: str | None = Field(None, max_length=4096, description="Output folder (relative to the job file).")
    characters: dict[Word, Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=dict, max_length=64, description="Alias -> library name/id or .flx path."
    )
    defaults: dict[Literal["still", "pack", "video", "sequence", "train", "score"], dict[str, Any]] = Field(
        default_factory=dict, description="Per kind: keys every shot of that kind starts from."
    )
    shots: list[JobShot] = Field(min_length=1, max_length=MAX_SHOTS)
    base_dir: str = Field("", exclude=True, description="Folder relative paths are taken from (set by the reader).")

    @field_validator("output")
    @classmethod
    def _path_text(cls, v):
        from engine._core.text import check_text

        return None if v is None else check_text(v, "output", max_len=4096, multiline=False)

    def shot(self, shot_id: str) -> JobShot:
        for s in self.shots:
            if s.id == shot_id:
                return s
        raise InputError(f"job '{self.name}' has no shot '{shot_id}'")

    def path(self, value: str) -> str:
        """A path from the document, relative to the job file's folder."""
        p = Path(value).expanduser()
        return str(p if p.is_absolute() or not self.base_dir else Path(self.base_dir) / p)

    def seed_of(self, shot: JobShot) -> int:
        return shot.seed if shot.seed is not None else derived_seed(self.name, shot.id)


class PackArgs(BaseModel):
    """`kind: pack`: render the character pack (configs/pack.yaml) and store it as a new character version."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    candidates: int = Field(4, ge=1, le=16, description="Candidates per pack shot (the best is kept).")
    preset: str | None = Field(None, min_length=1, max_length=200, description="Stills preset (default: pack's).")
    shots: list[Word] | None = Field(None, max_length=32, description="A subset of the pack's shot ids.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the first pack shot's first candidate.")


class ScoreArgs(BaseModel):
    """`kind: score`: a consistency report of media made elsewhere (files or globs, relative to the job file)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    media: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(min_length=1, max_length=MAX_MEDIA)
    protocol: Literal["full", "opens2v"] = "full"
    encoder: str | None = Field(None, min_length=1, max_length=200)
    sequence: bool = Field(False, description="Score the files as one sequence (seams between them).")


def _line_map(text: str) -> dict[tuple, int]:
    """(key path) -> 1-based line of every mapping key and list item in a YAML text (aliases walked once)."""
    import yaml

    lines: dict[tuple, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    seen: set[int] = set()
    stack: list[tuple[Any, tuple]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, k.value)
                lines.setdefault(key, k.start_mark.line + 1)
                stack.append((v, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                key = (*path, i)
                lines.setdefault(key, v.start_mark.line + 1)
                stack.append((v, key))
    return lines


def _where(source: str, lines: dict[tuple, int], loc: tuple) -> str:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return f"{source} line {lines[loc[:n]]}"
    return source


def _key(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _allowed(model: type[BaseModel], err: dict) -> str:
    from engine._core.text import printable

    msg = str(err["msg"]).replace("Value error, ", "")
    if err["type"] == "extra_forbidden":
        allowed = sorted(set(model.model_fields) - set(_BASE_KEYS) - {"base_dir"})
        return f"unknown key (allowed: {', '.join(allowed)})"
    if err["type"] == "string_pattern_mismatch":
        got = printable(repr(err.get("input")), limit=60)
        return f"use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (got {got})"
    if err["type"] == "missing":
        return "is required"
    if err["type"] == "literal_error":
        return msg.replace("Input should be", "must be")
    got = printable(repr(err.get("input")), limit=60)
    return f"{printable(msg, limit=200)} (got {got})"


def _kind_error(job_source: str, lines, loc_prefix: tuple, model: type[BaseModel], e: ValidationError) -> ConfigError:
    from engine._core.validation import allowed_range

    errs = e.errors()
    err = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])  # a typo explains a missing key
    loc = (*loc_prefix, *err["loc"])
    name = str(err["loc"][0]) if err["loc"] else ""
    if name in model.model_fields and err["type"] in (
        "greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number",
        "int_parsing", "float_parsing", "int_from_float",
    ):  # fmt: skip
        from engine._core.text import printable

        what = f"must be {allowed_range(model, name)} (got {printable(repr(err.get('input')), limit=60)})"
    else:
        what = _allowed(model, err)
    return ConfigError(f"{_where(job_source, lines, loc)}: key '{_key(loc)}': {what}")


def kind_schema(kind: str) -> type[BaseModel]:
    """The schema that checks (and runs) a shot of `kind`."""
    if kind == "still":
        from engine.shots.still import StillShot

        return StillShot
    if kind == "video":
        from engine.shots.video import VideoShot

        return VideoShot
    if kind == "sequence":
        from engine.shots.sequence import SequenceSpec

        return SequenceSpec
    if kind == "train":
        from engine.training.spec import TrainSpec

        return TrainSpec
    if kind == "pack":
        return PackArgs
    return ScoreArgs


def shot_values(job: JobFile, shot: JobShot, names: dict[str, str] | None = None) -> dict[str, Any]:
    """The kind schema's values of `shot`: defaults, then the shot's keys, the seed, and its characters given as
    `names[alias]` (what the running Engine opens; the aliases themselves when `names` is None)."""
    values = {**job.defaults.get(shot.kind, {}), **shot.params()}
    name = (names or {}).get
    aliases = shot.aliases()
    if shot.kind == "still":
        values["characters"] = [name(a, a) for a in aliases]
        values["seed"] = job.seed_of(shot)
    elif shot.kind in ("video", "sequence"):
        values["character"] = name(aliases[0], aliases[0]) if aliases else None
        values["seed"] = job.seed_of(shot)
        if shot.kind == "sequence":
            values["shots"] = [
                {**s, "character": name(s["character"], s["character"])}
                if isinstance(s, dict) and isinstance(s.get("character"), str)
                else s
                for s in values.get("shots") or []
            ]
    elif shot.kind in ("train", "pack"):
        values["seed"] = job.seed_of(shot)
    elif shot.kind == "score" and isinstance(values.get("media"), list):
        values["media"] = [job.path(m) if isinstance(m, str) else m for m in values["media"]]
    for k in ("start_image", "end_image", "audio", "prior_dir"):
        if isinstance(values.get(k), str):
            values[k] = job.path(values[k])
    if shot.kind == "train" and isinstance(values.get("source"), str) and values["source"] not in ("pack", "refs"):
        values["source"] = job.path(values["source"])
    if shot.kind == "sequence":
        values["shots"] = [
            {**s, **{k: job.path(s[k]) for k in ("start_image", "end_image") if isinstance(s.get(k), str)}}
            if isinstance(s, dict)
            else s
            for s in values.get("shots") or []
        ]
    return values


def shot_spec(job: JobFile, shot: JobShot, names: dict[str, str] | None = None, *, source: str = "", lines=None):
    """The kind schema's object for `shot` (a `StillShot`, `VideoShot`, ...): every bound checked here."""
    model = kind_schema(shot.kind)
    values = shot_values(job, shot, names)
    try:
        return model.model_validate(values)
    except ValidationError as e:
        errs = e.errors()
        first = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])["loc"]
        key = first[0] if first else None
        if key is not None and key not in shot.params() and key in job.defaults.get(shot.kind, {}):
            prefix: tuple = ("defaults", shot.kind)  # the value came from the defaults: point there
        else:
            prefix = ("shots", job.shots.index(shot))
        raise _kind_error(source or job.name, lines or {}, prefix, model, e) from None


def media_files(media: list[str]) -> list[Path]:
    """A score shot's media (paths already taken relative to the job file): files, or globs of files; at most
    `MAX_MEDIA`."""
    import itertools

    from engine._core.text import printable

    found: list[Path] = []
    for path in media:
        if globlib.has_magic(path):  # bounded: never lists more than the limit
            matches = sorted(itertools.islice(globlib.iglob(path, recursive=False), MAX_MEDIA + 1))
        else:
            matches = [path]
        if not matches:
            raise InputError(
                f"score shot: no file matches '{printable(path, limit=200)}': check the path (relative to the job file)"
            )
        found.extend(Path(m) for m in matches)
        if len(found) > MAX_MEDIA:
            raise InputError(f"score shot: more than {MAX_MEDIA} media files: split it into several shots")
    return found


def _check(job: JobFile, source: str, lines: dict) -> JobFile:
    for kind, values in job.defaults.items():  # a shot's own keys: a default would be silently overridden
        for k in sorted(set(values) & set(_BASE_KEYS)):
            raise ConfigError(
                f"{_where(source, lines, ('defaults', kind, k))}: key 'defaults.{kind}.{k}': {k} is set per shot, "
                "not in defaults (shots without a seed get one derived from the job name and shot id)"
            )
    ids = [s.id for s in job.shots]
    for i, s in enumerate(job.shots):
        if ids.index(s.id) != i:
            raise ConfigError(f"{_where(source, lines, ('shots', i, 'id'))}: shot id '{s.id}' is used twice")
        if s.character is not None and s.characters is not None:
            raise ConfigError(f"{_where(source, lines, ('shots', i))}: give character or characters, not both")
        for a in s.aliases():
            if a not in job.characters:
                known = ", ".join(job.characters) or "none declared"
                raise ConfigError(
                    f"{_where(source, lines, ('shots', i))}: key 'shots[{i}].character': unknown character '{a}' "
                    f"(declare it under characters:, known: {known})"
                )
        if s.kind in ("pack", "train") and len(s.aliases()) != 1:
            raise ConfigError(f"{_where(source, lines, ('shots', i))}: a {s.kind} shot names one character")
        if s.kind in ("video", "sequence") and len(s.aliases()) > 1:
            raise ConfigError(f"{_where(source, lines, ('shots', i))}: a {s.kind} shot has one character")
        if s.kind == "score" and len(s.aliases()) != 1:
            raise ConfigError(f"{_where(source, lines, ('shots', i))}: a score shot names one character")
        if s.kind == "sequence":
            for j, seg in enumerate(s.params().get("shots") or []):
                a = seg.get("character") if isinstance(seg, dict) else None
                if isinstance(a, str) and a not in job.characters:
                    raise ConfigError(
                        f"{_where(source, lines, ('shots', i, 'shots', j))}: unknown character '{a}' "
                        "(declare it under characters:)"
                    )
        shot_spec(job, s, source=source, lines=lines)
    return job


def _validate(data: Any, source: str, base_dir: str | Path, lines: dict) -> JobFile:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a job file is a mapping (name:, characters:, shots: [...])")
    try:
        job = JobFile.model_validate({**data, "base_dir": str(base_dir)})
    except ValidationError as e:
        errs = e.errors()
        err = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
        loc = tuple(err["loc"])
        model: type[BaseModel] = JobFile
        if len(loc) >= 2 and loc[0] == "shots" and isinstance(loc[1], int):
            model = JobShot
            if err["type"] == "literal_error" and loc[-1] == "kind":
                raise ConfigError(
                    f"{_where(source, lines, loc)}: key '{_key(loc)}': kind must be one of {', '.join(KINDS)}"
                ) from None
        raise ConfigError(f"{_where(source, lines, loc)}: key '{_key(loc)}': {_allowed(model, err)}") from None
    flx = {a: job.path(v) if v.lower().endswith(".flx") else v for a, v in job.characters.items()}
    return _check(job.model_copy(update={"characters": flx}), source, lines)


def parse_job(data: Any = None, *, source: str, base_dir: str | Path = "", text: str | None = None) -> JobFile:
    """A job document, already parsed (`data`) or as YAML/JSON `text` (then errors carry line numbers), validated:
    one `ConfigError` naming the source, the line, the key and the allowed values."""
    from engine._core.yaml_io import parse_document

    lines: dict = {}
    if text is not None:
        data = parse_document(text, source)  # bounded: size, aliases, depth
        lines = _line_map(text)
    return _validate(data, source, base_dir, lines)


def load_job(path: str | Path) -> JobFile:
    """A job file (YAML, or JSON by suffix), bounded and validated; relative paths are relative to the file."""
    from engine._core.yaml_io import read_document

    p = Path(path)
    data = read_document(p, "job file")  # size, encoding, aliases, depth: the one bounded reader
    lines = _line_map(p.read_text("utf-8"))  # read_document accepted it: bounded UTF-8
    return _validate(data, str(p), p.resolve().parent, lines)


__all__ = [
    "JOB_FORMAT",
    "KINDS",
    "STAGES",
    "JobFile",
    "JobShot",
    "PackArgs",
    "ScoreArgs",
    "derived_seed",
    "kind_schema",
    "load_job",
    "media_files",
    "parse_job",
    "shot_spec",
    "shot_values",
]
