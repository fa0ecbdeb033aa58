"""Character operations: create from photos, re-embed for a new encoder, variants, identity references.

Pure functions over explicit arguments (library, analyzer, settings): no globals, so the CLI, the server and
`engine.api` all call the same code.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine._core.errors import CharacterFileError, FaceNotFound, InputError
from engine._core.text import printable

from .library import CharacterLibrary
from .merge import MERGE_METHOD, leave_one_out_distances, merge_embeddings
from .schema import (
    MAX_REF_WEIGHT,
    Character,
    CharacterProfile,
    EncoderEmbeddings,
    LoraInfo,
    ParentRef,
    Pose,
    ReferenceRecord,
    finite,
    utc_now,
    validate_encoder_id,
    validate_name,
)

HEAD_CROP_SIZE = 1024
HEAD_CROP_JPEG_QUALITY = 95
MAX_REFERENCES = 32


@dataclass(frozen=True)
class RefSpec:
    """One reference photo for `create_character`: path, merge weight, and which face (None = the only one)."""

    path: Path
    weight: float = 1.0
    face_index: int | None = None


def check_weight(weight: Any, what: str) -> float:
    """A reference merge weight: a finite number in (0, MAX_REF_WEIGHT] (the bound `ReferenceRecord` stores)."""
    try:
        w = float(weight)
    except (TypeError, ValueError):
        raise InputError(f"reference weight for {what} must be a number, e.g. photo.jpg:0.5") from None
    if not (math.isfinite(w) and 0.0 < w <= MAX_REF_WEIGHT):
        raise InputError(
            f"reference weight for {what} is {weight!r}: use a number above 0 and at most {MAX_REF_WEIGHT:g}, "
            "e.g. photo.jpg:0.5"
        )
    return w


def parse_ref_spec(spec: str) -> RefSpec:
    """`photo.jpg` or `photo.jpg:0.5`. Only a suffix after the LAST colon that parses as a number is a weight,
    so `C:\\photos\\a.jpg` and `a:b.jpg` stay paths."""
    path, weight = spec, 1.0
    head, sep, tail = spec.rpartition(":")
    if sep and head and re.fullmatch(r"\s*[0-9]*\.?[0-9]+(e[-+]?[0-9]+)?\s*", tail, flags=re.IGNORECASE):
        path, weight = head, check_weight(tail, printable(head, limit=80))
    return RefSpec(Path(path), weight)


def _as_refspec(r: Any) -> RefSpec:
    if isinstance(r, RefSpec):
        return RefSpec(r.path, check_weight(r.weight, printable(r.path, limit=80)), r.face_index)
    if isinstance(r, (str, Path)):
        return parse_ref_spec(str(r)) if isinstance(r, str) else RefSpec(r)
    path, *rest = r
    weight = check_weight(rest[0], printable(path, limit=80)) if rest and rest[0] is not None else 1.0
    face = rest[1] if len(rest) > 1 else None
    return RefSpec(Path(path), weight, face)


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(buf, format="JPEG", quality=HEAD_CROP_JPEG_QUALITY)
    return buf.getvalue()


def decode_image(data: bytes, what: str = "a stored reference crop") -> np.ndarray:
    """Stored crop bytes (from a library or an imported `.flx`) -> RGB uint8 array, or CharacterFileError."""
    from PIL import Image

    from engine.identity.images import to_rgb_array

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > 4096 * 4096:
                raise CharacterFileError(f"{what} is {im.width}x{im.height} pixels, larger than any crop we write")
            im.load()
            return to_rgb_array(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise CharacterFileError(f"{what} is not a readable image ({e}): re-export the character") from None


def _analyze(analyzer, image: np.ndarray) -> list:
    faces = analyzer.analyze(image)
    return faces if faces else analyzer.analyze(image, upsample=1)  # small faces (full-figure photos)


def _quality_dump(report: Any) -> dict | None:
    if report is None:
        return None
    data = report.model_dump(mode="json") if hasattr(report, "model_dump") else dict(report)
    return _json_safe(data)


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None  # a measurement that had no value, said so
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def quality_status(report: dict | None) -> str | None:
    if not report:
        return None
    return report.get("status") or report.get("overall")


def analyze_reference(spec: RefSpec, analyzer, *, quality_config=None) -> tuple[ReferenceRecord, np.ndarray]:
    """Detect, choose and embed the face in one photo; crops and quality report included."""
    from engine.identity.crops import head_and_shoulders_crop
    from engine.identity.images import load_image
    from engine.identity.quality import check_reference
    from engine.identity.select import choose_face

    image = load_image(spec.path)
    raw = spec.path.read_bytes()
    # The recorded file name goes through the one text rule; undecodable bytes or control characters in it are
    # kept as visible escapes rather than refusing a good photo for its name.
    filename = printable(spec.path.name, limit=200)
    faces = _analyze(analyzer, image)
    face_index = spec.face_index if len(faces) > 1 else None  # a single-face photo ignores a shared --face
    face = choose_face(faces, face_index, filename)
    if face.embedding is None:
        analyzer.embed(image, [face])
    report = check_reference(image, faces, face, quality_config)
    aligned = face.aligned
    head = head_and_shoulders_crop(image, face, size=HEAD_CROP_SIZE)
    h, w = image.shape[:2]
    rec = ReferenceRecord(
        source_filename=filename,
        source_sha256=hashlib.sha256(raw).hexdigest(),
        weight=float(spec.weight),
        face_index=int(face.index),
        image_size=(int(w), int(h)),
        box=tuple(finite(face.box, "face box")),
        detector_score=finite([face.score], "detector score")[0],
        landmarks=[tuple(finite(p, "landmark")) for p in np.asarray(face.landmarks).reshape(-1, 2)],
        kps5=[tuple(finite(p, "landmark")) for p in np.asarray(face.kps5).reshape(-1, 2)],
        pose=Pose(**dict(zip(("yaw", "pitch", "roll"), finite([face.yaw, face.pitch, face.roll], "head pose")))),
        quality=_quality_dump(report),
        head_crop_format="jpeg",
        aligned_png=_png(aligned) if aligned is not None else None,
        head_crop=_jpeg(head),
    )
    return rec, np.asarray(face.embedding, dtype=np.float32)


def _merge_into(
    refs: Sequence[ReferenceRecord],
    vectors: Sequence[np.ndarray | None],
    info,
    *,
    force: bool,
    check: Iterable[int] | None = None,
) -> EncoderEmbeddings:
    """Merge per-reference vectors (None = no face for this encoder), refusing outliers unless `force`.

    `check` limits the refusal to those reference indices (the new ones when references are added: older ones
    were accepted, perhaps forced, when they came in); None checks all."""
    idx = [i for i, v in enumerate(vectors) if v is not None]
    if not idx:
        raise FaceNotFound(f"no reference has a face that encoder {info.encoder_id} can embed: use clearer photos")
    vecs = [vectors[i] for i in idx]
    weights = [refs[i].weight for i in idx]
    loo = leave_one_out_distances(vecs, weights, info)
    checked = set(idx if check is None else check)
    over = [(d, i) for d, i in zip(loo, idx) if d is not None and d > info.threshold and i in checked]
    if over and not force:
        d, i = max(over)
        if len(idx) == 2:
            a, b = (refs[j].source_filename for j in idx)
            raise InputError(
                f"references {a} and {b} look like different people (distance {d:.3f}, {info.encoder_id} threshold "
                f"{info.threshold:.2f}): add a third photo to tell which is wrong, remove one, or pass --force"
            )
        more = f" ({len(over) - 1} other reference(s) also over)" if len(over) > 1 else ""
        raise InputError(
            f"reference {refs[i].source_filename} looks like a different person: distance {d:.3f} from the other "
            f"references (threshold {info.threshold:.2f} for {info.encoder_id}){more}: remove it or pass --force"
        )
    loo_all: list[float | None] = [None] * len(refs)
    for d, i in zip(loo, idx):
        loo_all[i] = None if d is None else round(float(d), 6)
    return EncoderEmbeddings(
        encoder_id=info.encoder_id,
        dim=int(info.dim),
        metric=info.metric,
        threshold=float(info.threshold),
        model_sha256=info.model_sha256,
        merge=MERGE_METHOD,
        vector=merge_embeddings(vecs, weights, info).tolist(),
        per_reference=[None if v is None else np.asarray(v, dtype=np.float32).tolist() for v in vectors],
        leave_one_out_distances=loo_all,
    )


def create_character(
    name: str,
    refs: Iterable[RefSpec | tuple | str | Path],
    profile: CharacterProfile | None,
    analyzer,
    *,
    force: bool = False,
    quality_config=None,
    now: str | None = None,
) -> Character:
    """Build version 1 of a character from reference photos.

    Args:
        name (`str`): library name.
        refs: `RefSpec`s, `(path, weight, face_index)` tuples or `path[:weight]` strings.
        profile (`CharacterProfile`, *optional*): the written look.
        analyzer (`FaceAnalyzer`): detection + embedding backend (e.g. `get_analyzer()`).
        force (`bool`, *optional*, defaults to `False`): keep references that look like another person.

    Raises:
        `InputError` (unreadable photo, outlier reference), `FaceNotFound`, `AmbiguousFace` (asks for `--face N`).
    """
    import engine

    name = validate_name(name)
    specs = [_as_refspec(r) for r in refs]
    if not specs:
        raise InputError("no reference photos: pass at least one --ref photo.jpg")
    if len(specs) > MAX_REFERENCES:
        raise InputError(f"{len(specs)} reference photos: use at most {MAX_REFERENCES}")
    info = analyzer.info
    validate_encoder_id(info.encoder_id)
    records, vectors = [], []
    for spec in specs:
        rec, vec = analyze_reference(spec, analyzer, quality_config=quality_config)
        _refuse_small_face(rec, force=force)
        records.append(rec)
        vectors.append(vec)
    emb = _merge_into(records, vectors, info, force=force)
    stamp = now or utc_now()
    profile = profile.model_copy(deep=True) if profile is not None else CharacterProfile()
    return Character(
        id=str(uuid.uuid4()),
        name=name,
        version=1,
        created=stamp,
        updated=stamp,
        engine_version=engine.__version__,
        change=f"created from {len(records)} reference(s)" + (" (outlier check overridden)" if force else ""),
        profile=profile,
        references=records,
        embeddings={info.encoder_id: emb},
    )


def add_references(
    character: Character,
    refs: Iterable[RefSpec | tuple | str | Path],
    analyzers: Sequence,
    *,
    force: bool = False,
    quality_config=None,
    now: str | None = None,
) -> Character:
    """A new version with more reference photos, merged into every embedding the character has.

    The first analyzer detects and embeds the face in each new photo (record, crops, quality report) and its
    encoder gets the same checks as `create_character`: a face below the size minimum or a new photo that looks
    like a different person is refused unless `force`. Every other encoder of the character embeds the new head
    crops the way `reembed` does (largest face, outliers recorded, not refused).

    Args:
        character (`Character`): the version to extend (unchanged; a copy becomes version N+1).
        refs: `RefSpec`s, `(path, weight, face_index)` tuples or `path[:weight]` strings.
        analyzers (`Sequence[FaceAnalyzer]`): one per encoder in `character.embeddings`, the checking one first.
        force (`bool`, *optional*, defaults to `False`): keep new references that look like another person.

    Raises:
        `InputError`: no or too many photos, a photo already among the references, an analyzer missing or made by
            another model file than the stored embedding, an embedding-only character; `FaceNotFound`,
            `AmbiguousFace` as for `create_character`.
    """
    import engine

    name = printable(character.name)
    specs = [_as_refspec(r) for r in refs]
    if not specs:
        raise InputError("no reference photos to add: pass at least one --ref photo.jpg")
    total = len(character.references) + len(specs)
    if total > MAX_REFERENCES:
        raise InputError(
            f"character '{name}' has {len(character.references)} reference(s); adding {len(specs)} makes {total}: "
            f"use at most {MAX_REFERENCES} in all"
        )
    if not character.references:
        raise InputError(
            f"character '{name}' has no reference photos (an embedding-only character, e.g. imported from a ReActor "
            "face model), so new photos cannot be merged with it: create a character from photos instead"
        )
    by_encoder = {a.info.encoder_id: a for a in analyzers}
    if not analyzers or analyzers[0].info.encoder_id not in character.embeddings:
        have = ", ".join(sorted(character.embeddings)) or "none"
        raise InputError(f"the first analyzer must use one of the encoders of '{name}' (has: {have})")
    n_old = len(character.references)
    for enc, emb in character.embeddings.items():
        info = by_encoder[enc].info if enc in by_encoder else None
        if info is None:
            raise InputError(f"character '{name}' has a {enc} embedding: adding references needs that analyzer too")
        if emb.model_sha256 is None or emb.model_sha256 != info.model_sha256 or int(emb.dim) != int(info.dim):
            raise InputError(
                f"the {enc} embedding of '{name}' was made by another model file than this machine's: run "
                f"`flx character reembed {name} --encoder {enc}` first"
            )
        if len(emb.per_reference) != n_old:
            raise InputError(
                f"the {enc} embedding of '{name}' has {len(emb.per_reference)} per-reference vectors for "
                f"{n_old} references: run `flx character reembed {name} --encoder {enc}` first"
            )
    have_sha = {r.source_sha256: r.source_filename for r in character.references}
    primary = analyzers[0]
    records: list[ReferenceRecord] = []
    vectors: list[np.ndarray] = []
    for spec in specs:
        rec, vec = analyze_reference(spec, primary, quality_config=quality_config)
        if rec.source_sha256 in have_sha:
            raise InputError(
                f"{rec.source_filename} is already a reference of '{name}' (as {have_sha[rec.source_sha256]}): "
                "give it a higher weight instead (photo.jpg:2)"
            )
        have_sha[rec.source_sha256] = rec.source_filename
        _refuse_small_face(rec, force=force)
        records.append(rec)
        vectors.append(vec)
    all_refs = [*character.references, *records]
    new_idx = range(n_old, len(all_refs))
    embeddings = {}
    for enc, emb in character.embeddings.items():
        old = [None if v is None else np.asarray(v, dtype=np.float32) for v in emb.per_reference]
        if enc == primary.info.encoder_id:
            embeddings[enc] = _merge_into(all_refs, [*old, *vectors], primary.info, force=force, check=new_idx)
        else:
            extra = [_embed_crop(by_encoder[enc], r) for r in records]
            embeddings[enc] = _merge_into(all_refs, [*old, *extra], by_encoder[enc].info, force=True)
    change = f"added {len(records)} reference(s)" + (" (outlier check overridden)" if force else "")
    new = character.next_version(change, now=now)
    new.engine_version = engine.__version__
    new.references = [*new.references, *records]
    new.embeddings = embeddings
    return new


def _embed_crop(analyzer, ref: ReferenceRecord) -> np.ndarray | None:
    """The embedding of the largest face in a reference's head crop (None when this analyzer finds none)."""
    if not ref.head_crop:
        return None
    img = decode_image(ref.head_crop, f"head crop of {ref.source_filename}")
    faces = _analyze(analyzer, img)
    if not faces:
        return None
    face = max(faces, key=lambda f: f.area)
    if face.embedding is None:
        analyzer.embed(img, [face])
    return np.asarray(face.embedding, dtype=np.float32)


def _refuse_small_face(rec: ReferenceRecord, *, force: bool) -> None:
    """A face below the checklist's hard minimum (`face_size` fails) gives an unstable identity: refuse it
    unless forced. Other failed checks stay advisory (the report is stored and printed)."""
    checks = (rec.quality or {}).get("checks") or []
    size = next((c for c in checks if c.get("name") == "face_size"), None)
    if size is not None and size.get("status") == "fail" and not force:
        raise InputError(
            f"the face in {rec.source_filename} is only {size.get('value'):.0f} px wide ({size.get('threshold')}): "
            "use a closer or larger photo, or pass --force"
        )


def reembed(character: Character, analyzer, *, force: bool = True, now: str | None = None) -> Character:
    """A new version with embeddings for `analyzer`'s encoder, computed from the stored head-and-shoulders crops.

    The largest face in each crop is used. Outliers are reported in the record but not refused by default:
    the user already accepted these references when the character was created.
    """
    import engine

    info = analyzer.info
    validate_encoder_id(info.encoder_id)
    if not character.references:
        raise InputError(
            f"character '{character.name}' has no reference photos (an embedding-only character, e.g. imported from "
            "a ReActor face model), so it cannot be embedded with another encoder: recreate it from photos with "
            "`flx character create`"
        )
    if not character.references_included or not any(r.head_crop for r in character.references):
        raise InputError(
            f"character '{character.name}' has no stored reference crops (it was exported with --no-references): "
            "recreate it from the photos with `flx character create`"
        )
    vectors = [_embed_crop(analyzer, ref) for ref in character.references]
    emb = _merge_into(character.references, vectors, info, force=force)
    verb = "re-embedded" if info.encoder_id in character.embeddings else "embedded"
    new = character.next_version(f"{verb} with {info.encoder_id}", now=now)
    new.engine_version = engine.__version__
    new.embeddings = {**new.embeddings, info.encoder_id: emb}
    return new


def make_variant(
    base: Character,
    name: str,
    *,
    wardrobe: str | None = None,
    notes: str | None = None,
    profile_overrides: dict | None = None,
    now: str | None = None,
) -> Character:
    """A new character (own id, version 1) that shares `base`'s identity and overrides its look.

    It copies the embeddings, references and LoRA so that its `.flx` stands alone; `parent` records the base
    character id and version it was made from.
    """
    import engine

    name = validate_name(name)
    stamp = now or utc_now()
    v = base.model_copy(deep=True)
    v.id = str(uuid.uuid4())
    v.name = name
    v.version = 1
    v.parent = ParentRef(character_id=base.id, version=base.version)
    v.variant = name
    v.created = v.updated = stamp
    v.engine_version = engine.__version__
    v.change = f"variant of '{base.name}' v{base.version}"
    data = v.profile.model_dump()
    if wardrobe is not None:
        data["wardrobe_baseline"] = wardrobe
    if notes is not None:
        data["notes"] = notes
    data.update(profile_overrides or {})
    v.profile = CharacterProfile.model_validate(data)
    return v


def update_profile(character: Character, changes: dict, *, now: str | None = None) -> Character:
    """A new version with profile fields changed (unknown keys are kept like any other field)."""
    from pydantic import ValidationError

    if not changes:
        raise InputError("nothing to change: pass --profile FILE or --set field=value")
    data = character.profile.model_dump()
    data.update(changes)
    try:
        profile = CharacterProfile.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(
            f"profile field '{'.'.join(map(str, err['loc']))}': {err['msg']} (got {err.get('input')!r})"
        ) from None
    new = character.next_version("profile: " + ", ".join(sorted(changes)), now=now)
    new.profile = profile
    return new


def attach_lora(
    character: Character,
    lora_safetensors: bytes,
    base_model_id: str,
    *,
    info: dict | None = None,
    now: str | None = None,
) -> Character:
    """A new version carrying an identity LoRA (its `.safetensors` bytes, stored verbatim in the `.flx`).

    Args:
        character (`Character`): the version to extend (unchanged; a copy becomes version N+1).
        lora_safetensors (`bytes`): the diffusers-format `pytorch_lora_weights.safetensors` file.
        base_model_id (`str`): the base weights component it was trained on.
        info (`dict`, *optional*): the trainer's report (target, base_model_sha256, rank, alpha, text_encoder,
            steps, trigger, training_set, best_step, best_likeness, final_loss); checked against the file.
        now (`str`, *optional*): the version's time (tests).

    Raises:
        `InputError`: the bytes are not a diffusers LoRA for the target, are over the size limit, or disagree with
            `info` (rank, alpha, text encoder, base model).
    """
    from pydantic import ValidationError

    from engine._core.lora_file import read_lora_file

    from .flx_format import MAX_LORA_BYTES, _human
    from .schema import first_error

    if not base_model_id or not isinstance(base_model_id, str):
        raise InputError("a LoRA needs the id of the base model it was trained on")
    if not isinstance(lora_safetensors, (bytes, bytearray)):
        raise InputError("LoRA data must be the bytes of the trained .safetensors file")
    if len(lora_safetensors) > MAX_LORA_BYTES:
        raise InputError(
            f"LoRA file is {_human(len(lora_safetensors))}, over the {_human(MAX_LORA_BYTES)} a character can hold: "
            "train a lower rank or save it in float16"
        )
    info = {k: v for k, v in dict(info or {}).items() if k not in ("data", "sha256", "size")}
    if info.get("base_model_id", base_model_id) != base_model_id:
        raise InputError(
            f"LoRA info says base model '{info['base_model_id']}' but it is attached for '{base_model_id}': "
            "pass the base it was trained on"
        )
    record = {**info, "base_model_id": base_model_id}
    record.update(sha256=hashlib.sha256(lora_safetensors).hexdigest(), size=len(lora_safetensors))
    try:
        given = LoraInfo.model_validate(record)  # types and bounds first: the checks below compare values
    except ValidationError as e:
        raise InputError(f"LoRA info {first_error(e)}") from None
    target = given.target or ("wan-transformer" if _looks_like(lora_safetensors, "transformer.") else "sdxl-unet")
    summary = read_lora_file(bytes(lora_safetensors), target)
    denoiser = summary.components[0]
    file_rank, file_alpha = summary.rank.get(denoiser), summary.alpha.get(denoiser)
    if given.rank is not None and file_rank is not None and given.rank != file_rank:
        raise InputError(f"LoRA info says rank {given.rank} but the file has rank {file_rank}: pass the matching info")
    if given.alpha is not None and file_alpha is not None and given.alpha != file_alpha:
        raise InputError(
            f"LoRA info says alpha {given.alpha} but the file's adapter metadata says {file_alpha}: pass the "
            "matching info"
        )
    rank = given.rank if given.rank is not None else file_rank
    alpha = given.alpha if given.alpha is not None else file_alpha
    if not summary.has_metadata and alpha is not None and rank is not None and float(alpha) != float(rank):
        raise InputError(
            f"LoRA file has no lora_adapter_metadata, so diffusers would load it with alpha = rank ({rank}), not "
            f"{alpha:g}: save it with save_lora_weights(..., unet_lora_adapter_metadata=...)"
        )
    has_te = any(c != denoiser for c in summary.components)
    if "text_encoder" in info and given.text_encoder != has_te:
        raise InputError(
            f"LoRA info says text_encoder={given.text_encoder} but the file "
            f"{'adapts' if has_te else 'does not adapt'} a text encoder: pass the matching info"
        )
    try:
        lora = LoraInfo.model_validate(
            {**record, "target": target, "rank": rank, "alpha": alpha, "text_encoder": has_te}
        )
    except ValidationError as e:
        raise InputError(f"LoRA file {first_error(e)}") from None
    lora.data = bytes(lora_safetensors)
    new = character.next_version(f"LoRA attached (base {base_model_id})", now=now)
    new.lora = lora
    return new


def _looks_like(data: bytes, prefix: str) -> bool:
    """The file's first tensor key starts with `prefix` (to guess the target of a LoRA attached without info)."""
    import json
    import struct

    try:
        (n,) = struct.unpack("<Q", bytes(data[:8]))
        keys = [k for k in json.loads(bytes(data[8 : 8 + min(n, 16 * 1024**2)])) if k != "__metadata__"]
    except (struct.error, ValueError, UnicodeDecodeError, TypeError):
        return False
    return bool(keys) and all(k.startswith(prefix) for k in keys)


def auto_archive(library: CharacterLibrary, days: int | None, archive_dir, *, now=None) -> list[Path]:
    """The inactivity policy: archive characters unused for `days` (None = policy off, the default)."""
    return [] if days is None else library.archive_inactive(days, archive_dir, now=now)


def identity_reference(character: Character, info):
    """The `IdentityReference` (merged embedding) of a character for the encoder described by `info`.

    `info` is the `EncoderInfo` of the analyzer that will compare against it. The stored embedding must come from
    the same encoder id AND the same model file (sha256): vectors of another model (a tiny random twin, another pack
    release) live in another space, and comparing them would report any face as anyone.
    """
    from engine.identity.types import IdentityReference

    encoder_id = info.encoder_id
    emb = character.embeddings.get(encoder_id)
    fix = f"run `flx character reembed {printable(character.name)} --encoder {encoder_id}`"
    if emb is None or not emb.vector:
        have = ", ".join(sorted(character.embeddings)) or "none"
        raise InputError(f"character '{printable(character.name)}' has no {encoder_id} embedding (has: {have}): {fix}")
    if emb.model_sha256 is None:
        raise InputError(
            f"character '{printable(character.name)}' has a {encoder_id} embedding that does not record which model "
            f"file made it (written before FLX Engine recorded model hashes), so it cannot be trusted: {fix}"
        )
    if info.model_sha256 is not None and emb.model_sha256 != info.model_sha256:
        raise InputError(
            f"character '{printable(character.name)}' has a {encoder_id} embedding made by model file "
            f"{emb.model_sha256[:12]}…, but this machine's {encoder_id} model is {info.model_sha256[:12]}…: "
            f"{fix} (or install the model it was made with)"
        )
    return IdentityReference(
        character_id=character.id,
        version=character.version,
        name=character.name,
        encoder_id=encoder_id,
        embedding=np.asarray(emb.vector, dtype=np.float32),
        model_sha256=emb.model_sha256,
    )


# ---------------------------------------------------------------------------------------- library-level verbs


def open_library(settings) -> CharacterLibrary:
    """The library at `settings.library_file`, with the inactivity policy applied when it is on.

    The policy (`FLX_ARCHIVE_AFTER_DAYS`, off by default for local use) exports characters unused for that
    many days to `.flx` files in the archive folder, then removes them from the active list.
    """
    lib = CharacterLibrary(settings.library_file)
    if settings.archive_after_days is not None:
        try:
            auto_archive(lib, settings.archive_after_days, settings.archive_dir or Path(settings.home) / "archive")
        except BaseException:
            lib.close()
            raise
    return lib


def create_in_library(
    library: CharacterLibrary,
    name: str,
    refs: Iterable,
    analyzer,
    *,
    profile: CharacterProfile | None = None,
    force: bool = False,
    quality_config=None,
) -> Character:
    """Create and store a character; the name is checked free before any photo is analysed."""
    name = validate_name(name)
    library.check_name_free(name)
    ch = create_character(name, refs, profile, analyzer, force=force, quality_config=quality_config)
    return library.add(ch)


def variant_in_library(
    library: CharacterLibrary, base: str, name: str, *, wardrobe: str | None = None, notes: str | None = None
) -> Character:
    return library.add(make_variant(library.get(base), name, wardrobe=wardrobe, notes=notes))


def update_profile_in_library(library: CharacterLibrary, name_or_id: str, changes: dict) -> Character:
    return library.add(update_profile(library.get(name_or_id), changes))


def reembed_in_library(library: CharacterLibrary, name_or_id: str, analyzer) -> Character:
    return library.add(reembed(library.get(name_or_id), analyzer))


def identity_reference_from_library(library: CharacterLibrary, name_or_id: str, info, *, touch=True):
    ch = library.get(name_or_id)
    ref = identity_reference(ch, info)
    if touch:
        library.touch_last_used(ch.id)
    return ref
