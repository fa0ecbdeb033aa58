"""The prompt composer: a scene and up to 4 characters become the exact text sent to a model.

Final prompt = the user's scene (with `[char1]`..`[char4]` and character names rewritten to where that person is)
+ one identity clause per character from its profile (age, hair, eyes, anchor details with their side, wardrobe
unless the scene names clothing), each saying which region the person is in + the motion clause (video). The
negative prompt = the template's base negative + the characters' forbidden variations as negative terms.

The wording lives in `configs/prompts.yaml` (versioned, one template set per model family); this module is its one
schema and pure functions over it: no model, no tokenizer, no I/O except reading that file. The scene comes first
because SDXL's CLIP encoders read only 77 tokens and drop the rest silently; `ComposedPrompt.notes` says when the
estimate passes that.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine._core.errors import ConfigError, InputError
from engine._core.text import MAX_TEXT_LEN, check_text, printable

if TYPE_CHECKING:  # only the type: pipelines may use this module without depending on engine.characters
    from engine.characters.schema import Character

MAX_CHARACTERS = 4  # one identity region each (the same limit as engine.identity.layout)
MAX_TEMPLATE_LEN = 500

# Profile fields an identity part may name (scalar text fields of CharacterProfile), and the two list fields.
PROFILE_FIELDS = frozenset(
    {"age_range", "ethnicity", "skin_tone", "face_shape", "eye_shape", "eye_colour", "hair_colour",
     "hair_texture", "hair_style", "makeup", "wardrobe_baseline", "energy"}
)  # fmt: skip
LIST_FIELDS = frozenset({"permanent_accessories", "anchor_details"})
WARDROBE_FIELD = "wardrobe_baseline"

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
# Anything that looks like a character placeholder: `[char1]`, `[Char 2]`, and the mistakes `[char]`, `[char7]`.
_CHAR_PLACEHOLDER = r"\[\s*char\s*(?P<num>\d{0,3})\s*\]"
# A lower bound on CLIP's token count: its tokenizer gives each run of letters at least one token, each digit one,
# and each run of other marks at least one.
_TOKENS = re.compile(r"[^\W\d_]+|\d|[^\w\s]+|_+")
_ID = r"^[a-z0-9][a-z0-9._-]*$"


def _template(allowed: frozenset[str] | set[str], required: frozenset[str] | set[str] = frozenset()):
    """A template string type: one line, only the `allowed` placeholders, `required` ones present."""

    def check(value: str) -> str:
        check_text(value, "template", max_len=MAX_TEMPLATE_LEN, multiline=False)
        names = _PLACEHOLDER.findall(value)
        if "{" in _PLACEHOLDER.sub("", value) or "}" in _PLACEHOLDER.sub("", value):
            raise ValueError("braces are only for placeholders such as {scene}: remove the stray '{' or '}'")
        unknown = [n for n in names if n not in allowed]
        if unknown:
            if not allowed:
                raise ValueError(f"unknown placeholder {{{unknown[0]}}}: this text takes no placeholders")
            choices = ", ".join("{" + a + "}" for a in sorted(allowed))
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}: use {choices}")
        missing = sorted(set(required) - set(names))
        if missing:
            raise ValueError(f"must contain {{{missing[0]}}}")
        return value

    return Annotated[str, AfterValidator(check)]


def _line(max_len: int, what: str):
    """One line of text (separators, words): no control characters (a newline would split A1111 metadata)."""
    return Annotated[str, AfterValidator(lambda v: check_text(v, what, max_len=max_len, multiline=False))]


Sep = _line(20, "separator")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AnchorPhrases(_Frozen):
    """How an anchor detail is phrased for each `AnchorDetail.side` (the subject's own left/right)."""

    left: _template({"description"}, {"description"})
    right: _template({"description"}, {"description"})
    centre: _template({"description"}, {"description"})
    none: _template({"description"}, {"description"})


class IdentityTemplates(_Frozen):
    """The identity clause: parts in order (a part whose profile fields are all empty is left out)."""

    parts: tuple[_template(PROFILE_FIELDS | LIST_FIELDS), ...] = Field(max_length=64)
    join: Sep = Field(default=", ", description="Joins the kept parts.")
    anchor: AnchorPhrases


class RegionPhrase(_Frozen):
    """One region of a layout: its label, how the scene refers to its person, and how its identity is wrapped."""

    label: str = Field(pattern=r"^[a-z][a-z -]{0,30}$", description="Recorded in bindings (e.g. 'left').")
    refer: _template(set()) = Field(description="Replaces `[charN]` or the character's name in the scene.")
    subject: _template({"identity"}, {"identity"}) = Field(description="Wraps the identity clause.")


class SubjectTemplates(_Frozen):
    """Region phrasing for 1-4 characters, left to right."""

    join: Sep = "; "
    regions: dict[Literal[1, 2, 3, 4], tuple[RegionPhrase, ...]]

    @model_validator(mode="after")
    def _one_layout_per_count(self):
        for n in range(1, MAX_CHARACTERS + 1):
            layout = self.regions.get(n)
            if layout is None:
                raise ValueError(f"regions needs a layout for {n} character(s) (keys 1 to {MAX_CHARACTERS})")
            if len(layout) != n:
                raise ValueError(f"regions.{n} must list {n} region(s), one per character (got {len(layout)})")
            labels = [r.label for r in layout]
            if len(set(labels)) != n:
                raise ValueError(f"regions.{n}: labels must differ (got {labels})")
        return self


class NegativeTemplates(_Frozen):
    """The negative prompt: the base negative, then the drift clause built from forbidden variations."""

    base: _template(set()) = ""
    drift: _template({"terms"}, {"terms"}) = "{terms}"
    join: Sep = ", "


class FamilyTemplates(_Frozen):
    """Everything one model family (sdxl, wan) needs to turn a scene and characters into its text."""

    description: _line(200, "description") = ""
    prompt: tuple[_template({"scene", "subjects", "motion"}), ...] = Field(min_length=1, max_length=8)
    join: Sep = Field(default=", ", description="Joins the prompt's kept clauses.")
    motion: _template({"motion"}, {"motion"}) | None = Field(
        default=None, description="The motion clause (video); null: this family takes no motion."
    )
    max_tokens: int | None = Field(default=None, ge=1, le=100_000, description="Text tokens the encoder reads.")
    identity: IdentityTemplates
    subjects: SubjectTemplates
    negative: NegativeTemplates

    @model_validator(mode="after")
    def _clauses_present(self):
        names = {n for part in self.prompt for n in _PLACEHOLDER.findall(part)}
        for need in ("scene", "subjects"):
            if need not in names:
                raise ValueError(f"prompt must contain {{{need}}} (else the {need} would be dropped)")
        if ("motion" in names) != (self.motion is not None):
            raise ValueError("prompt holds {motion} exactly when `motion` is set: set both or neither")
        return self


class PromptTemplates(_Frozen):
    """`configs/prompts.yaml`: a named, versioned template set with one entry per model family."""

    version: int = Field(ge=1, le=1_000_000, description="Bump on every wording change; outputs record it.")
    name: str = Field(pattern=_ID, max_length=64, description="Id of this template set.")
    wardrobe_words: tuple[Annotated[_line(40, "wardrobe word"), Field(min_length=1)], ...] = Field(max_length=500)
    negation_prefixes: tuple[Annotated[str, Field(pattern=r"^[A-Za-z]{1,20}$")], ...] = Field(
        default=("no", "not", "without", "never"), max_length=50
    )
    families: dict[Annotated[str, Field(pattern=_ID, max_length=32)], FamilyTemplates] = Field(min_length=1)

    def family(self, family: str) -> FamilyTemplates:
        """The templates of `family`, or `InputError` listing the families there are."""
        try:
            return self.families[family]
        except KeyError:
            raise InputError(
                f"no prompt templates for model family '{printable(family, limit=40)}' in {self.name} "
                f"v{self.version}: choose one of {', '.join(sorted(self.families))}"
            ) from None

    def version_label(self, family: str) -> str:
        """What outputs record, e.g. `flx-default v1 (sdxl)`."""
        return f"{self.name} v{self.version} ({family})"

    def digest(self) -> str:
        """sha256 of the templates' content (whitespace and comments in the file do not count)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def default_prompts_path() -> Path:
    """`configs/prompts.yaml` of this checkout (next to the presets)."""
    from engine._core.settings import repo_root

    return repo_root() / "configs" / "prompts.yaml"


def _one_line(source: object, err: ValidationError) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"]) or "(top level)"
    msg = str(e["msg"]).replace("Value error, ", "")
    got = e.get("input")
    got_txt = f" (got {got!r})" if not isinstance(got, (dict, list, tuple)) and e["type"] != "missing" else ""
    return printable(f"{source}: key '{key}': {msg}{got_txt}", limit=400)


def parse_prompt_templates(data: object, source: object = "<prompt templates>") -> PromptTemplates:
    """Validate an already-parsed document; errors are one-line `ConfigError`s naming `source` and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: prompt templates must be a YAML mapping (version: 1, name: ..., families: ...)")
    try:
        return PromptTemplates.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_one_line(source, e)) from None


def load_prompt_templates(path: str | Path | None = None) -> PromptTemplates:
    """Read and validate prompt templates (default `configs/prompts.yaml`) through the bounded YAML reader.

    Raises:
        `ConfigError`: missing, unreadable, oversized or invalid file; the message names the file and the key.
    """
    from engine._core.yaml_io import read_document

    p = Path(path) if path is not None else default_prompts_path()
    return parse_prompt_templates(read_document(p, "prompt templates"), p)


# ------------------------------------------------------------------------------------------------ the result


class PromptBinding(_Frozen):
    """Which character is which: its `[charN]` index, its record, and the region it was given."""

    index: int = Field(ge=1, le=MAX_CHARACTERS, description="N of `[charN]`: the order the characters were given.")
    character_id: str
    version: int
    name: str
    region: str = Field(description="Region label from the templates ('left', 'whole image', ...).")
    position: int = Field(ge=1, le=MAX_CHARACTERS, description="Region number, 1 = leftmost.")
    mentioned: Literal["placeholder", "name"] | None = Field(
        default=None, description="How the scene first refers to this character (None: not mentioned)."
    )


class PromptClause(_Frozen):
    """One part of the composed text, for display."""

    kind: Literal["scene", "identity", "subjects", "motion", "negative_base", "drift"]
    text: str
    character: int | None = Field(default=None, description="Binding index for an identity clause.")


class ComposedPrompt(_Frozen):
    """What is sent to the model, and how it was made (recorded with every output)."""

    prompt: str
    negative_prompt: str
    family: str
    template_version: str = Field(description="e.g. 'flx-default v1 (sdxl)'.")
    template_sha256: str = Field(description="Digest of the template set's content.")
    bindings: tuple[PromptBinding, ...] = ()
    clauses: tuple[PromptClause, ...] = ()
    notes: tuple[str, ...] = Field(default=(), description="What was left out and why, token budget warnings.")
    token_estimate: int = Field(description="Lower bound on the prompt's text tokens (CLIP-like count).")
    max_tokens: int | None = None

    def metadata(self) -> dict:
        """The fields an output records about its prompt."""
        return {
            "prompt_template": self.template_version,
            "prompt_template_sha256": self.template_sha256,
            "characters": [b.model_dump(mode="json") for b in self.bindings],
        }


# ------------------------------------------------------------------------------------------------ composing


def _tidy(text: str) -> str:
    return " ".join(text.split())


def fill(template: str, values: dict[str, str]) -> str:
    """`template` with its placeholders replaced; "" when every placeholder it names is empty (the part is left
    out). A template without placeholders is kept as it is."""
    names = _PLACEHOLDER.findall(template)
    if names and not any(values.get(n) for n in names):
        return ""
    return _tidy(_PLACEHOLDER.sub(lambda m: values.get(m.group(1)) or "", template))


def _join(parts: Sequence[str], sep: str) -> str:
    return sep.join(p for p in parts if p)


def _words_re(words: Sequence[str]) -> re.Pattern | None:
    """Whole words or phrases, case-insensitive; each also matches its plural (-s, -es)."""
    if not words:
        return None
    alt = "|".join(
        re.escape(w) for w in sorted({w.strip().lower() for w in words if w.strip()}, key=len, reverse=True)
    )
    return re.compile(rf"(?<!\w)(?:{alt})(?:e?s)?(?!\w)", re.IGNORECASE)


def check_character_count(n: int) -> None:
    """Refuse more characters than one image has regions for (before any character is loaded)."""
    if n > MAX_CHARACTERS:
        raise InputError(
            f"{n} characters given: one image holds at most {MAX_CHARACTERS} (one region each): leave out {n - 4}"
        )


def _clean_text(value: str | None, what: str) -> str:
    if value is None:
        return ""
    return _tidy(unicodedata.normalize("NFC", check_text(value, what, max_len=MAX_TEXT_LEN, multiline=True)))


def identity_clause(profile, identity: IdentityTemplates, *, drop_wardrobe: bool = False) -> str:
    """The identity clause of one profile; empty fields (and the wardrobe, when the scene overrides it) left out."""
    values = {f: _tidy(str(getattr(profile, f, None) or "")) for f in PROFILE_FIELDS}
    if drop_wardrobe:
        values[WARDROBE_FIELD] = ""
    values["permanent_accessories"] = _join(
        [_tidy(a) for a in getattr(profile, "permanent_accessories", None) or []], ", "
    )
    anchors = []
    for a in getattr(profile, "anchor_details", None) or []:
        phrase = getattr(identity.anchor, getattr(a, "side", "none") or "none", identity.anchor.none)
        anchors.append(fill(phrase, {"description": _tidy(a.description)}))
    values["anchor_details"] = _join(anchors, ", ")
    return _join([fill(part, values) for part in identity.parts], identity.join)


def negative_term(variation: str, prefixes: Sequence[str]) -> str:
    """A forbidden variation as a negative term: "no glasses" -> "glasses" (leading negations dropped)."""
    term = _tidy(variation).strip(" .,;:!")
    if prefixes:
        alt = "|".join(re.escape(p) for p in prefixes)
        term = re.sub(rf"^(?:(?:{alt})(?:\s+|$))+", "", term, flags=re.IGNORECASE)
    return term.strip(" .,;:!")


def _in_text(phrase: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.IGNORECASE) is not None


def compose_prompt(
    scene: str,
    characters: Sequence[Character] = (),
    *,
    family: str = "sdxl",
    motion: str | None = None,
    templates: PromptTemplates | None = None,
) -> ComposedPrompt:
    """Compose the prompt and negative prompt for `scene` with up to 4 characters.

    Characters take the regions left to right in the order given (as `engine.identity.layout`'s `auto` columns).
    In the scene, `[charN]` is the N-th character given, and a character's name (its library name or the profile's
    display name; case-insensitive, whole words) refers to it too: both are rewritten to where that person is
    ("the person on the left"), since the model knows neither placeholders nor library names.

    Args:
        scene (`str`): what to render, in the user's words.
        characters (sequence of `Character`, *optional*): 0 to 4 characters.
        family (`str`, *optional*, defaults to `"sdxl"`): template family (`sdxl` stills, `wan` video).
        motion (`str`, *optional*): how things move (families with a motion clause only).
        templates (`PromptTemplates`, *optional*): defaults to `load_prompt_templates()`.

    Raises:
        `InputError`: a fifth character, a placeholder for a character not given, an unknown placeholder, a name
            two characters share used in the scene, motion for a stills family, or nothing to render.

    Examples:
        >>> compose_prompt("[char1] reading in a cafe", [ava]).prompt
        'the person reading in a cafe, aged 28-32, auburn hair, green eyes'
    """
    characters = list(characters)
    check_character_count(len(characters))
    templates = templates if templates is not None else load_prompt_templates()
    fam = templates.family(family)
    scene = _clean_text(scene, "scene")
    motion = _clean_text(motion, "motion")
    if motion and fam.motion is None:
        raise InputError(
            f"motion is for video families: the '{family}' templates take none: leave the motion (--motion) out"
        )
    if not scene and not characters:
        raise InputError("the scene is empty and no character was given: describe what to render")

    layout = fam.subjects.regions[len(characters)] if characters else ()
    scene_text, mentioned = _bind(scene, characters, layout)

    wardrobe_re = _words_re(templates.wardrobe_words)
    wardrobe_hit = wardrobe_re.search(scene) if wardrobe_re else None
    notes: list[str] = []
    clauses: list[PromptClause] = [PromptClause(kind="scene", text=scene_text)] if scene_text else []
    subjects, bindings = [], []
    for i, (ch, region) in enumerate(zip(characters, layout), start=1):
        ident = identity_clause(ch.profile, fam.identity, drop_wardrobe=wardrobe_hit is not None)
        if wardrobe_hit and getattr(ch.profile, WARDROBE_FIELD, None):
            notes.append(
                f"wardrobe baseline of {ch.name} left out: the scene names clothing ('{wardrobe_hit.group(0)}')"
            )
        if ident:
            clauses.append(PromptClause(kind="identity", text=ident, character=i))
        subjects.append(fill(region.subject, {"identity": ident}))
        bindings.append(
            PromptBinding(
                index=i,
                character_id=ch.id,
                version=ch.version,
                name=ch.name,
                region=region.label,
                position=i,
                mentioned=mentioned.get(i),
            )  # fmt: skip
        )
    subjects_text = _join(subjects, fam.subjects.join)
    if subjects_text and len(characters) > 1:
        clauses.append(PromptClause(kind="subjects", text=subjects_text))
    motion_text = fill(fam.motion, {"motion": motion}) if fam.motion else ""
    if motion_text:
        clauses.append(PromptClause(kind="motion", text=motion_text))
    values = {"scene": scene_text, "subjects": subjects_text, "motion": motion_text}
    prompt = _join([fill(part, values) for part in fam.prompt], fam.join)

    base = fill(fam.negative.base, {})
    seen = {_tidy(t).casefold() for t in base.split(",") if t.strip()}
    terms = []
    for ch in characters:
        for variation in getattr(ch.profile, "forbidden_variations", None) or []:
            term = negative_term(variation, templates.negation_prefixes)
            if not term or term.casefold() in seen:
                continue
            seen.add(term.casefold())
            if _in_text(term, prompt):
                notes.append(
                    f"'{term}' (forbidden for {ch.name}) left out of the negative prompt: the prompt asks for it"
                )
                continue
            terms.append(term)
    drift = fill(fam.negative.drift, {"terms": ", ".join(terms)})
    if base:
        clauses.append(PromptClause(kind="negative_base", text=base))
    if drift:
        clauses.append(PromptClause(kind="drift", text=drift))
    negative = _join([base, drift], fam.negative.join)

    tokens = len(_TOKENS.findall(prompt))
    if fam.max_tokens is not None and tokens > fam.max_tokens:
        notes.append(
            f"about {tokens}+ text tokens: the {family} text encoder reads only the first {fam.max_tokens}, so the "
            "end of the prompt is cut: shorten the scene or the profiles"
        )
    return ComposedPrompt(
        prompt=prompt,
        negative_prompt=negative,
        family=family,
        template_version=templates.version_label(family),
        template_sha256=templates.digest(),
        bindings=tuple(bindings),
        clauses=tuple(clauses),
        notes=tuple(notes),
        token_estimate=tokens,
        max_tokens=fam.max_tokens,
    )


def _bind(scene: str, characters: list, layout: Sequence[RegionPhrase]) -> tuple[str, dict[int, str]]:
    """Rewrite `[charN]` and character names in `scene` to their region's `refer` phrase.

    Returns the rewritten scene and {index: "placeholder" | "name"} for the characters the scene mentions.
    """
    names: list[tuple[str, int]] = []  # (name as written in the record, index)
    for i, ch in enumerate(characters, start=1):
        for n in {ch.name, getattr(ch.profile, "name", None)}:
            if n and n.strip():
                names.append((unicodedata.normalize("NFC", n.strip()), i))
    names.sort(key=lambda x: len(x[0]), reverse=True)  # the longest name wins where names overlap ("ava", "ava rose")
    pattern = _CHAR_PLACEHOLDER
    if names:
        alt = "|".join(re.escape(n) for n, _ in names)
        pattern += rf"|(?P<name>(?<!\w)(?:{alt})(?!\w))"
    mentioned: dict[int, str] = {}

    def replace(m: re.Match) -> str:
        if m.group("num") is not None:
            num = m.group("num")
            if not num or not 1 <= int(num) <= MAX_CHARACTERS:
                raise InputError(
                    f"unknown placeholder '{printable(m.group(0))}' in the scene: use [char1] to [char{MAX_CHARACTERS}]"
                )
            k = int(num)
            if k > len(characters):
                raise InputError(
                    f"the scene refers to [char{k}] but {len(characters)} character(s) were given: "
                    f"give a character for it or remove [char{k}]"
                )
            mentioned.setdefault(k, "placeholder")
            return layout[k - 1].refer
        text = m.group("name")
        hits = sorted({i for n, i in names if re.fullmatch(re.escape(n), text, re.IGNORECASE)})
        if len(hits) > 1:
            raise InputError(
                f"the scene names '{printable(text, limit=60)}' but characters {', '.join(map(str, hits))} are "
                f"all called that: write [char{hits[0]}] or [char{hits[1]}] instead"
            )
        mentioned.setdefault(hits[0], "name")
        return layout[hits[0] - 1].refer

    rewritten = re.sub(pattern, replace, scene, flags=re.IGNORECASE)
    return _tidy(rewritten), mentioned


__all__ = [
    "MAX_CHARACTERS",
    "ComposedPrompt",
    "FamilyTemplates",
    "PromptBinding",
    "PromptClause",
    "PromptTemplates",
    "check_character_count",
    "compose_prompt",
    "default_prompts_path",
    "fill",
    "identity_clause",
    "load_prompt_templates",
    "negative_term",
    "parse_prompt_templates",
]
