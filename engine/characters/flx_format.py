"""The `.flx` character file: one safetensors container, JSON metadata + tensors, checked before it is trusted.

Layout (see docs/flx-format.md): 8-byte little-endian header length N, N bytes of JSON header (safetensors
layout: `__metadata__` plus one entry per tensor), then the tensor bytes. `__metadata__` holds three strings:
`format` ("flx-character"), `format_version` ("1.3") and `flx`, the whole character document as canonical JSON.

Reading never executes anything (no pickle) and checks every size before allocating: file size, header length,
tensor count, per-tensor bytes; the sha256 over the content is verified before the record is built. Writing is
deterministic (sorted keys, fixed tensor order, times taken from the record), so export -> import -> export gives
the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from engine._core.atomic import atomic_write_bytes
from engine._core.errors import CharacterFileError, InputError

from .schema import ENCODER_ID_RE, Character, first_error

logger = logging.getLogger(__name__)

FORMAT_NAME = "flx-character"
FORMAT_VERSION = (1, 3)  # 1.1: embeddings record their model file's sha256; 1.2: the character pack; 1.3: LoRA info
FORMAT_VERSION_STR = f"{FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}"

# The library stores each version as one SQLite blob, and SQLite refuses blobs over SQLITE_MAX_LENGTH (1,000,000,000
# bytes by default): every file this reader accepts must also fit there, so the limits sit below it.
MAX_FILE_BYTES = 900 * 1024**2  # whole file
MAX_HEADER_BYTES = 16 * 1024**2  # JSON header (profile, quality reports, landmarks: typically < 200 KiB)
MAX_TENSORS = 4096
MAX_TENSOR_BYTES = 64 * 1024**2  # one crop or embedding
MAX_LORA_BYTES = 880 * 1024**2  # the LoRA blob (an SDXL LoRA of rank 128 in fp16 is ~450 MiB)
MAX_REFERENCES = 256
MAX_TENSOR_NAME = 256

LORA_TENSOR = "lora.safetensors"

# safetensors dtype -> (numpy dtype, item size). Unknown tensors of these types are kept verbatim.
_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8), "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2),
    "I64": ("<i8", 8), "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("i1", 1),
    "U64": ("<u8", 8), "U32": ("<u4", 4), "U16": ("<u2", 2), "U8": ("u1", 1), "BOOL": ("?", 1),
}  # fmt: skip
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-:]*$")
_DOC_KEYS = {"format", "format_version", "character", "references_included", "integrity"}


@dataclass
class LoadedFlx:
    """A parsed `.flx`: the character (blobs attached), the file's format version and any warnings."""

    character: Character
    format_version: str
    warnings: list[str] = field(default_factory=list)
    size: int = 0


def _human(n: int) -> str:
    return f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} bytes"


def _fail(source: str, msg: str) -> CharacterFileError:
    return CharacterFileError(f"{source}: {msg}")


def canonical_json(obj: Any) -> bytes:
    """The one JSON spelling used for hashing and writing: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def emb_tensor(encoder_id: str, ref: int | None = None) -> str:
    return f"emb.{encoder_id}.merged" if ref is None else f"emb.{encoder_id}.ref.{ref}"


def ref_tensor(i: int, kind: str) -> str:
    return f"ref.{i}.{kind}"  # kind: "aligned" (112x112 PNG) or "head" (head-and-shoulders JPEG/PNG)


def pack_tensor(i: int) -> str:
    return f"pack.{i}.image"  # PNG of pack image i


def check_tensor_name(name: str) -> str | None:
    """Why a tensor name is unsafe, or None. Names never become paths, but tools that unpack them might."""
    if not isinstance(name, str) or not name:
        return "empty tensor name"
    if len(name) > MAX_TENSOR_NAME:
        return f"tensor name longer than {MAX_TENSOR_NAME} characters"
    if ".." in name or not _NAME_OK.match(name):
        return f"unsafe tensor name {name[:60]!r} (path-like or control characters)"
    return None


# ----------------------------------------------------------------------------------------------- writing


def _tensors_of(character: Character, include_references: bool) -> dict[str, tuple[str, list[int], bytes]]:
    out: dict[str, tuple[str, list[int], bytes]] = {}

    def u8(b: bytes) -> tuple[str, list[int], bytes]:
        return ("U8", [len(b)], bytes(b))

    for enc_id, emb in character.embeddings.items():
        vec = np.asarray(emb.vector, dtype="<f4")
        out[emb_tensor(enc_id)] = ("F32", [int(vec.size)], vec.tobytes())
        for i, v in enumerate(emb.per_reference):
            if v is not None:
                arr = np.asarray(v, dtype="<f4")
                out[emb_tensor(enc_id, i)] = ("F32", [int(arr.size)], arr.tobytes())
    if include_references and character.references_included:
        for i, ref in enumerate(character.references):
            if ref.aligned_png is not None:
                out[ref_tensor(i, "aligned")] = u8(ref.aligned_png)
            if ref.head_crop is not None:
                out[ref_tensor(i, "head")] = u8(ref.head_crop)
    if include_references and character.references_included:  # pack images are pictures of the person too
        for i, img in enumerate(character.pack):
            if img.image_png is not None:
                out[pack_tensor(i)] = u8(img.image_png)
    if character.lora is not None and character.lora.data is not None:
        out[LORA_TENSOR] = u8(character.lora.data)
    for name, t in character.extra_tensors.items():
        out.setdefault(name, t)
    return out


def content_sha256(doc_wo_integrity: dict, tensors: dict[str, tuple[str, list[int], bytes]]) -> str:
    """sha256 over the canonical document and every tensor (name, dtype, shape, bytes) in name order."""
    h = hashlib.sha256()
    h.update(b"flx-character\0")
    h.update(canonical_json(doc_wo_integrity))
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        h.update(b"\0" + canonical_json([name, dtype, list(shape), len(data)]) + b"\0")
        h.update(data)
    return h.hexdigest()


def _doc_of(character: Character, include_references: bool) -> dict:
    char = character.model_dump(mode="json")
    included = include_references and character.references_included
    doc = dict(getattr(character, "_doc_extra", None) or {})
    doc.update(
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION_STR,
            "character": char,
            "references_included": included,
        }
    )
    return doc


def to_bytes(character: Character, *, include_references: bool = True) -> bytes:
    """Serialise one character version to `.flx` bytes (deterministic: same record -> same bytes).

    Args:
        character (`Character`): the record, with blobs attached.
        include_references (`bool`, *optional*, defaults to `True`):
            False leaves out every image crop (privacy); metadata, quality reports and embeddings stay.
    """
    tensors = _tensors_of(character, include_references)
    doc = _doc_of(character, include_references)
    doc["integrity"] = {"algorithm": "sha256", "content_sha256": content_sha256(doc, tensors)}
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION_STR, "flx": canonical_json(doc).decode()}
    out = pack_safetensors(metadata, tensors)
    if struct.unpack("<Q", out[:8])[0] > MAX_HEADER_BYTES:
        raise InputError(f"character '{character.name}' metadata is over the .flx header limit: shorten the profile")
    if len(out) > MAX_FILE_BYTES:  # what this engine writes, it (and the library) can read back
        raise InputError(
            f"character '{character.name}' would be a {_human(len(out))} .flx file, over the {_human(MAX_FILE_BYTES)} "
            "limit: store a smaller LoRA"
        )
    return out


def pack_safetensors(metadata: dict[str, str], tensors: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    """A safetensors container with a canonical header (sorted keys), so the same input gives the same bytes.

    Written here rather than with `safetensors.numpy.save`, whose writer orders `__metadata__` keys by a
    randomised hash map (three runs, three orders): that would break byte-identical re-export. The result is
    plain safetensors; `from_bytes` has the reference parser check it on every read.
    """
    # Data order: wider dtypes first (keeps float32 4-byte aligned), then by name. Same rule as safetensors'.
    order = sorted(tensors, key=lambda n: (-_DTYPES[tensors[n][0]][1], n))
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name in order:
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    head = canonical_json(header)
    head += b" " * (-len(head) % 8)  # safetensors pads the header to 8 bytes with spaces
    return b"".join([struct.pack("<Q", len(head)), head, *(tensors[n][2] for n in order)])


def write_flx(character: Character, path: str | os.PathLike, *, include_references: bool = True) -> Path:
    """Write a `.flx` file atomically (temp file + rename)."""
    return atomic_write_bytes(path, to_bytes(character, include_references=include_references))


# ----------------------------------------------------------------------------------------------- reading


def _no_dupes(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _parse_version(v: Any, source: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{1,4})\.(\d{1,4})", v) if isinstance(v, str) else None
    if not m:
        raise _fail(source, f"format_version {str(v)[:20]!r} is not MAJOR.MINOR: not a valid .flx file")
    return int(m.group(1)), int(m.group(2))


def _check_version(ver: tuple[int, int], source: str, warnings: list[str]) -> None:
    major, minor = ver
    if major != FORMAT_VERSION[0]:
        raise _fail(
            source,
            f"format version {major}.{minor} is not supported by this engine (reads {FORMAT_VERSION[0]}.x): "
            + ("upgrade FLX Engine to open it" if major > FORMAT_VERSION[0] else "convert it with an older engine"),
        )
    if minor > FORMAT_VERSION[1]:
        warnings.append(
            f"{source}: written by a newer engine (format {major}.{minor}, this engine writes {FORMAT_VERSION_STR}); "
            "loaded anyway, unknown fields are kept"
        )


def _parse_header(data: bytes, source: str) -> tuple[dict, dict[str, dict], int]:
    if len(data) < 8:
        raise _fail(source, "file is truncated (shorter than the 8-byte header length): re-export it")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES:
        raise _fail(source, f"declares a {n}-byte header, over the {_human(MAX_HEADER_BYTES)} limit: not a .flx file")
    if 8 + n > len(data):
        raise _fail(source, f"file is truncated (header says {n} bytes, file has {len(data) - 8}): re-export it")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"), object_pairs_hook=_no_dupes)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _fail(source, f"header is not valid JSON ({str(e)[:80]}): not a .flx file or damaged") from None
    if not isinstance(header, dict):
        raise _fail(source, "header is not a JSON object: not a .flx file")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise _fail(
            source, f"not an FLX character file (no '{FORMAT_NAME}' metadata): export it with `flx character export`"
        )
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _fail(source, "metadata values must be strings: the file is damaged")
    if len(header) > MAX_TENSORS:
        raise _fail(source, f"{len(header)} tensors, over the limit of {MAX_TENSORS}")
    return meta, header, 8 + n


def _small_ints(xs: Any, max_len: int) -> bool:
    return isinstance(xs, list) and len(xs) <= max_len and all(type(x) is int and 0 <= x < 2**62 for x in xs)


def _check_tensors(entries: dict[str, Any], data_len: int, source: str) -> dict[str, tuple[str, list[int], int, int]]:
    """Validate names, dtypes, shapes and offsets (contiguous, inside the file, within size caps)."""
    out: dict[str, tuple[str, list[int], int, int]] = {}
    for name, e in entries.items():
        why = check_tensor_name(name)
        if why:
            raise _fail(source, why)
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise _fail(source, f"tensor {name!r} entry is malformed")
        dtype, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise _fail(source, f"tensor {name!r} has unsupported dtype {str(dtype)[:10]!r}")
        if not _small_ints(shape, 4) or not _small_ints(offs, 2) or len(offs) != 2:
            raise _fail(source, f"tensor {name!r} has an invalid shape or offsets")
        count = 1
        for s in shape:
            count *= s
        nbytes = count * _DTYPES[dtype][1]
        cap = MAX_LORA_BYTES if name == LORA_TENSOR else MAX_TENSOR_BYTES
        if nbytes > cap:
            raise _fail(source, f"tensor {name!r} declares {nbytes} bytes, over the {_human(cap)} limit")
        b, end = offs
        if end - b != nbytes or end > data_len:
            raise _fail(source, f"tensor {name!r} offsets do not match its size or run past the end: file is damaged")
        out[name] = (dtype, shape, b, end)
    pos = 0
    for _name, (_, _, b, end) in sorted(out.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if b != pos:
            raise _fail(source, "tensor data overlaps or has gaps: the file is damaged")
        pos = end
    if pos != data_len:
        raise _fail(source, f"file has {data_len - pos} unexpected trailing bytes or is truncated: re-export it")
    return out


def _safetensors_check(blob: bytes, source: str) -> None:
    """Second opinion from the reference safetensors parser (after our own caps, so it never sees a giant header).

    `safetensors.deserialize` reads every dtype the format defines (BF16 too: numpy has none), without a framework.
    """
    from safetensors import SafetensorError, deserialize

    try:
        deserialize(blob)
    except (SafetensorError, ValueError, TypeError, OverflowError, KeyError) as e:
        raise _fail(source, f"safetensors container is invalid ({str(e)[:80]})") from None


def from_bytes(data: bytes, *, source: str = "<bytes>") -> LoadedFlx:
    """Parse and verify `.flx` bytes. Every problem raises `CharacterFileError` (one line naming `source`)."""
    if len(data) > MAX_FILE_BYTES:
        raise _fail(source, f"file is {len(data)} bytes, over the {_human(MAX_FILE_BYTES)} limit")
    warnings: list[str] = []
    meta, entries, data_start = _parse_header(data, source)
    ver = _parse_version(meta.get("format_version"), source)
    _check_version(ver, source, warnings)
    layout = _check_tensors(entries, len(data) - data_start, source)
    _safetensors_check(data, source)
    body = memoryview(data)[data_start:]
    tensors = {n: (dt, shp, bytes(body[b:e])) for n, (dt, shp, b, e) in layout.items()}

    try:
        doc = json.loads(meta.get("flx", ""), object_pairs_hook=_no_dupes)
    except (ValueError, RecursionError) as e:
        raise _fail(source, f"character document is not valid JSON ({str(e)[:80]}): the file is damaged") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("character"), dict):
        raise _fail(source, "character document is missing: the file is damaged")
    if doc.get("format") != FORMAT_NAME or _parse_version(doc.get("format_version"), source) != ver:
        raise _fail(source, "document and container disagree on format/version: the file is damaged")
    integrity = doc.pop("integrity", None)
    if not isinstance(integrity, dict) or integrity.get("algorithm") != "sha256":
        raise _fail(source, "no sha256 integrity record: the file is damaged or not from FLX Engine")
    try:
        actual = content_sha256(doc, tensors)
    except (ValueError, TypeError, RecursionError):
        raise _fail(
            source, "character document holds values that cannot be stored (NaN/inf?): the file is damaged"
        ) from None
    if actual != integrity.get("content_sha256"):
        raise _fail(source, "checksum mismatch: the file was modified or damaged after export; re-export the original")

    character = _build_character(doc, tensors, source)
    return LoadedFlx(character=character, format_version=f"{ver[0]}.{ver[1]}", warnings=warnings, size=len(data))


MAX_EMBEDDING_NORM = 1e4  # dlib vectors have norm ~1.4, raw ArcFace ~20-30


def _vector(buf: bytes, what: str, source: str) -> list[float]:
    """An embedding vector from a file: finite, not all zero, of a sane length (or CharacterFileError)."""
    v = np.frombuffer(buf, dtype="<f4")
    norm = float(np.linalg.norm(v.astype(np.float64))) if np.isfinite(v).all() else float("nan")
    if not (0.0 < norm <= MAX_EMBEDDING_NORM):
        raise _fail(source, f"{what} holds NaN, infinite, zero or huge values: the file is damaged")
    return v.tolist()


def _build_character(doc: dict, tensors: dict[str, tuple[str, list[int], bytes]], source: str) -> Character:
    raw = doc["character"]
    refs = raw.get("references")
    if isinstance(refs, list) and len(refs) > MAX_REFERENCES:
        raise _fail(source, f"{len(refs)} references, over the limit of {MAX_REFERENCES}")
    try:
        ch = Character.model_validate(raw)
    except ValidationError as e:
        raise _fail(source, f"character {first_error(e)}: the file is damaged or not from FLX Engine") from None
    included = doc.get("references_included")
    if not isinstance(included, bool):
        raise _fail(source, "references_included must be true or false: the file is damaged")
    ch.references_included = included
    remaining = dict(tensors)

    def take(name: str, dtype: str, required: bool) -> tuple[list[int], bytes] | None:
        t = remaining.pop(name, None)
        if t is None:
            if required:
                raise _fail(source, f"tensor {name!r} is missing: the file is damaged")
            return None
        if t[0] != dtype or len(t[1]) != 1:
            raise _fail(source, f"tensor {name!r} must be a 1-D {dtype} tensor: the file is damaged")
        return t[1], t[2]

    for enc_id, emb in ch.embeddings.items():
        if enc_id != emb.encoder_id or not ENCODER_ID_RE.match(enc_id) or ".." in enc_id:
            raise _fail(source, f"encoder id {enc_id[:40]!r} is invalid: the file is damaged")
        shape, buf = take(emb_tensor(enc_id), "F32", True)
        if shape[0] != emb.dim:
            raise _fail(source, f"embedding for {enc_id} has {shape[0]} values, document says {emb.dim}")
        emb.vector = _vector(buf, f"embedding for {enc_id}", source)
        emb.per_reference = []
        for i in range(len(ch.references)):
            t = take(emb_tensor(enc_id, i), "F32", False)
            if t is not None and t[0][0] != emb.dim:
                raise _fail(source, f"reference {i} embedding for {enc_id} has the wrong size")
            emb.per_reference.append(
                None if t is None else _vector(t[1], f"reference {i} embedding for {enc_id}", source)
            )
    for i, ref in enumerate(ch.references):
        a = take(ref_tensor(i, "aligned"), "U8", False)
        h = take(ref_tensor(i, "head"), "U8", False)
        ref.aligned_png = a[1] if a else None
        ref.head_crop = h[1] if h else None
    for i, img in enumerate(ch.pack):
        t = take(pack_tensor(i), "U8", False)
        if t is not None and hashlib.sha256(t[1]).hexdigest() != img.image_sha256:
            raise _fail(source, f"pack image {i} does not match its recorded sha256: the file is damaged")
        img.image_png = t[1] if t else None
    if ch.lora is not None:
        t = take(LORA_TENSOR, "U8", True)
        if len(t[1]) != ch.lora.size or hashlib.sha256(t[1]).hexdigest() != ch.lora.sha256:
            raise _fail(source, "LoRA data does not match its recorded size/sha256: the file is damaged")
        ch.lora.data = t[1]
    ch.extra_tensors = remaining  # from a newer minor version: kept verbatim, written back on export
    ch._doc_extra = {k: v for k, v in doc.items() if k not in _DOC_KEYS}
    return ch


def read_flx(path: str | os.PathLike) -> LoadedFlx:
    """Read and verify a `.flx` file. Its size and its header are checked before the body is read, so a huge (or
    sparse) file that is not a character costs a few bytes of reading, not its size in memory."""
    p = Path(path)
    source = p.name
    try:
        st = p.stat()
        if not p.is_file():
            raise CharacterFileError(f"{p}: not a regular file: give the path of a .flx file")
        if st.st_size > MAX_FILE_BYTES:
            raise _fail(source, f"file is {st.st_size} bytes, over the {_human(MAX_FILE_BYTES)} limit")
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) == 8:
                (n,) = struct.unpack("<Q", head)
                if n <= MAX_HEADER_BYTES:
                    head += f.read(n)
            _parse_header(head, source)  # refuses a non-.flx header before the body is read
            data = head + f.read(MAX_FILE_BYTES + 1 - len(head))
    except FileNotFoundError:
        raise CharacterFileError(f"{p}: file not found: check the path") from None
    except OSError as e:
        raise CharacterFileError(f"{p}: cannot read ({e.strerror or e}): check permissions") from None
    loaded = from_bytes(data, source=source)
    for w in loaded.warnings:
        logger.warning(w)
    return loaded


def _lora_summary(lora) -> dict | None:
    """The LoRA record without its list of training-image hashes (their count instead)."""
    if lora is None:
        return None
    return {**lora.model_dump(mode="json", exclude={"training_set"}), "training_images": len(lora.training_set)}


def inspect_flx(path: str | os.PathLike) -> dict:
    """A summary of a `.flx` file (verified, not imported): identity, encoders, references, lineage."""
    loaded = read_flx(path)
    ch = loaded.character
    return {
        "file": str(path),
        "size_bytes": loaded.size,
        "format": FORMAT_NAME,
        "format_version": loaded.format_version,
        "warnings": loaded.warnings,
        "integrity": "ok (sha256 verified)",
        "id": ch.id,
        "name": ch.name,
        "version": ch.version,
        "variant": ch.variant,
        "parent": ch.parent.model_dump() if ch.parent else None,
        "created": ch.created,
        "updated": ch.updated,
        "engine_version": ch.engine_version,
        "change": ch.change,
        "encoders": {
            k: {"dim": e.dim, "metric": e.metric, "threshold": e.threshold} for k, e in ch.embeddings.items()
        },
        "references_included": ch.references_included,
        "references": [
            {
                "source_filename": r.source_filename,
                "weight": r.weight,
                "quality": (r.quality or {}).get("status"),
                "crops": r.head_crop is not None,
            }
            for r in ch.references
        ],
        "lora": _lora_summary(ch.lora),
        "profile": ch.profile.model_dump(mode="json", exclude_defaults=True),
        "unknown_tensors": sorted(ch.extra_tensors),
    }
