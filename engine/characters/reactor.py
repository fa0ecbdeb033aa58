"""ReActor face models: a character's ArcFace identity as the `.safetensors` file ComfyUI-ReActor loads, and back.

What ReActor reads and writes (Gourieff/ComfyUI-ReActor, `reactor_utils.py`):

- `save_face_model(face, filename)` writes nine tensors of an insightface `Face` with `safetensors.torch.save_file`
  and no metadata: `bbox` F32 [4], `kps` F32 [5, 2], `det_score` F32 [], `landmark_3d_68` F32 [68, 3], `pose` F32 [3]
  (pitch, yaw, roll in degrees), `landmark_2d_106` F32 [106, 2], `embedding` F32 [512], `gender` I64 [] (1 = male),
  `age` I64 [].
- `load_face_model(filename)` reads every tensor with `safe_open(framework="pt")` and `.numpy()`, into a `Face`
  dict: it requires no key, but fails on a dtype numpy lacks (BF16). Then the swapper (`scripts/reactor_swapper.py`,
  `swap_face`) sorts the loaded faces by `bbox` area and feeds `normed_embedding` (= `embedding` / its L2 norm) to
  inswapper_128 (`reactor_core/face_models.py`, `INSwapper.get`), and the blend nodes (`nodes.py`,
  `BuildFaceModel.blend_faces`, `ReActorWeight`) read all nine fields, average the *raw* `embedding`s and save the
  result with `save_face_model` again. So a file must hold all nine, in these shapes, to work everywhere in ReActor.

The embedding is insightface's raw buffalo_l (w600k_r50) output, not unit length. The swap itself normalises it, so
only the blend nodes see its scale: a longer vector counts for more in their mean. Our merged cosine vector is unit
length (`merge.py`), so the export rescales it to the weighted mean norm of the character's own raw per-reference
vectors (what a ReActor model built from the same photos would hold); an embedding-only character has none, so it
gets `NOMINAL_NORM` = sqrt(512) (the raw vector's components have a standard deviation of about 1). The import keeps
the direction only (unit length, as every cosine identity in the library).

Nothing here unpickles: files are parsed by safetensors after size, header, key, dtype, shape and value checks, and
pickle/PyTorch archives (`.ipadpt`, `.pt`, ...) are refused on sight.
"""

from __future__ import annotations

import json
import math
import os
import struct
import uuid
from pathlib import Path

import numpy as np

from engine._core.atomic import atomic_write_bytes
from engine._core.errors import CharacterFileError, InputError
from engine._core.text import printable

from .flx_format import MAX_EMBEDDING_NORM, pack_safetensors
from .schema import Character, EncoderEmbeddings, ReferenceRecord, utc_now, validate_name

DEFAULT_ENCODER = "arcface-buffalo_l-w600k_r50"
REACTOR_MODEL = "buffalo_l-w600k_r50"  # ReActor analyses with buffalo_l; inswapper_128 was trained on its vectors
DIM = 512
NOMINAL_NORM = math.sqrt(DIM)

MAX_FILE_BYTES = 1024**2  # a ReActor face model is ~4 KiB
MAX_HEADER_BYTES = 64 * 1024
MAX_TENSORS = 64
MAX_META_VALUE = 1000

_FLOAT = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}
_INT = {"I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8"}
# name -> (shape, accepted dtypes). The export writes F32 floats and I64 integers, as ReActor does.
FIELDS: dict[str, tuple[tuple[int, ...], dict[str, str]]] = {
    "bbox": ((4,), _FLOAT),
    "kps": ((5, 2), _FLOAT),
    "det_score": ((), _FLOAT),
    "landmark_3d_68": ((68, 3), _FLOAT),
    "pose": ((3,), _FLOAT),
    "landmark_2d_106": ((106, 2), _FLOAT),
    "embedding": ((DIM,), _FLOAT),
    "gender": ((), _INT),
    "age": ((), _INT),
}
PICKLE_SUFFIXES = {".ipadpt", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".npy", ".npz"}


def _check_encoder(encoder_id: str, dim: int | None = None, metric: str | None = None) -> str | None:
    """Why this encoder's vectors cannot be a ReActor embedding, or None (`dim`/`metric` checked when given)."""
    what = f"encoder {printable(encoder_id, limit=80)}"
    if not encoder_id.endswith(REACTOR_MODEL):
        return (
            f"{what} is not buffalo_l w600k_r50, the model ReActor embeds with (inswapper_128 would read its vector "
            "as another face)"
        )
    if dim is not None and (dim != DIM or metric != "cosine"):
        return f"{what} is {dim}-d {metric}, not a 512-d cosine ArcFace encoder"
    return None


# ----------------------------------------------------------------------------------------------- export


def _f32(values, shape: tuple[int, ...]) -> tuple[str, list[int], bytes]:
    arr = np.asarray(values, dtype="<f4").reshape(shape)
    return "F32", list(shape), arr.tobytes()


def _i64(value: int) -> tuple[str, list[int], bytes]:
    return "I64", [], np.asarray(value, dtype="<i8").tobytes()


def _raw_norm(character: Character, emb: EncoderEmbeddings) -> tuple[float, str]:
    """The scale of the exported vector, and how it was chosen (see the module docstring)."""
    pairs = [
        (float(np.linalg.norm(np.asarray(v, dtype=np.float64))), ref.weight)
        for v, ref in zip(emb.per_reference, character.references)
        if v is not None
    ]
    pairs = [(n, w) for n, w in pairs if math.isfinite(n) and 0.0 < n <= MAX_EMBEDDING_NORM]
    if pairs:
        return sum(n * w for n, w in pairs) / sum(w for _, w in pairs), "weighted mean norm of the reference vectors"
    return NOMINAL_NORM, "nominal sqrt(512): no reference vectors"


def _face_fields(ref: ReferenceRecord | None) -> dict[str, tuple[str, list[int], bytes]]:
    """ReActor's non-identity fields from one reference photo's analysis; zeros where nothing is known.

    ReActor copies these but never uses them for a loaded model's swap. `det_score` is clipped to [0, 1] (dlib's HOG
    scores are margins, not probabilities); `landmark_3d_68` takes dlib's 68 points (the same iBUG order) with z = 0;
    `landmark_2d_106`, `gender` and `age` are unknown and written as zeros.
    """
    bbox, kps, lmk68, pose, score = np.zeros(4), np.zeros((5, 2)), np.zeros((68, 3)), np.zeros(3), 0.0
    if ref is not None:
        bbox = np.asarray(ref.box, dtype=np.float64)
        if len(ref.kps5) == 5:
            kps = np.asarray(ref.kps5, dtype=np.float64)
        if len(ref.landmarks) == 68:
            lmk68[:, :2] = np.asarray(ref.landmarks, dtype=np.float64)
        pose = np.asarray([ref.pose.pitch, ref.pose.yaw, ref.pose.roll], dtype=np.float64)  # insightface's order
        score = min(max(float(ref.detector_score), 0.0), 1.0)
    return {
        "bbox": _f32(bbox, (4,)),
        "kps": _f32(kps, (5, 2)),
        "det_score": _f32(score, ()),
        "landmark_3d_68": _f32(lmk68, (68, 3)),
        "pose": _f32(pose, (3,)),
        "landmark_2d_106": _f32(np.zeros((106, 2)), (106, 2)),
        "gender": _i64(0),
        "age": _i64(0),
    }


def reactor_bytes(character: Character, *, encoder_id: str = DEFAULT_ENCODER) -> bytes:
    """The ReActor face model of `character` for `encoder_id`, as bytes (deterministic). Raises `InputError`."""
    import engine

    name = printable(character.name)
    fix = f"run `flx character reembed {name} --encoder {printable(encoder_id)}`"
    why = _check_encoder(encoder_id)
    emb = character.embeddings.get(encoder_id)
    if not why and (emb is None or not emb.vector):
        have = ", ".join(sorted(character.embeddings)) or "none"
        raise InputError(f"character '{name}' has no {printable(encoder_id)} embedding (has: {have}): {fix}")
    why = why or _check_encoder(encoder_id, emb.dim, emb.metric)
    if why:
        raise InputError(f"cannot export '{name}' for ReActor: {why}: use --encoder {DEFAULT_ENCODER}")
    if emb.model_sha256 is None:
        raise InputError(f"character '{name}' has a {encoder_id} embedding that records no model file: {fix}")
    vec = np.asarray(emb.vector, dtype=np.float64)
    norm = float(np.linalg.norm(vec)) if np.isfinite(vec).all() else float("nan")
    if vec.shape != (DIM,) or not (0.0 < norm <= MAX_EMBEDDING_NORM):
        raise InputError(f"character '{name}' has a damaged {encoder_id} embedding: {fix}")
    scale, how = _raw_norm(character, emb)
    idx = [i for i, v in enumerate(emb.per_reference) if v is not None and i < len(character.references)]
    ref = character.references[idx[0] if idx else 0] if character.references else None
    tensors = _face_fields(ref)
    tensors["embedding"] = _f32(vec / norm * scale, (DIM,))
    metadata = {
        "generator": f"FLX Engine {engine.__version__}",
        "flx_character_id": character.id,
        "flx_character_name": character.name,
        "flx_character_version": str(character.version),
        "flx_encoder_id": encoder_id,
        "flx_model_sha256": emb.model_sha256,
        "flx_embedding_norm": f"{scale:.6f}",
        "flx_embedding_norm_source": how,
        "flx_face_fields": f"from reference {ref.source_filename}" if ref is not None else "zeros (no references)",
    }
    return pack_safetensors(metadata, tensors)


def export_reactor(character: Character, out_path: str | os.PathLike, *, encoder_id: str = DEFAULT_ENCODER) -> Path:
    """Write `character`'s ArcFace identity as a ReActor face model `.safetensors`, atomically.

    Raises:
        `InputError`: no 512-d buffalo_l embedding for `encoder_id` (the message names `flx character reembed`), or
            an output name ReActor would not list. `OutputError`: the path cannot be written.
    """
    out = Path(out_path)
    if out.suffix.lower() != ".safetensors":
        raise InputError(
            f"'{printable(out)}': ReActor lists only .safetensors face models: name the file {out.stem}.safetensors"
        )
    data = reactor_bytes(character, encoder_id=encoder_id)
    return atomic_write_bytes(out, data)


# ----------------------------------------------------------------------------------------------- import


def _no_dupes(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _read_bounded(p: Path, fail) -> bytes:
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise fail(
            f"'{printable(p.suffix, limit=20)}' files can hold Python pickles, which FLX Engine never loads: "
            "save the face model as .safetensors with ReActor's Save Face Model node"
        )
    try:
        st = p.stat()
        if not p.is_file():
            raise CharacterFileError(f"{printable(p)}: not a regular file: give the path of a .safetensors face model")
        if st.st_size > MAX_FILE_BYTES:
            raise fail(f"file is {st.st_size} bytes, over the {MAX_FILE_BYTES} limit: not a ReActor face model")
        with open(p, "rb") as f:
            return f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise CharacterFileError(f"{printable(p)}: file not found: check the path") from None
    except OSError as e:
        raise CharacterFileError(f"{printable(p)}: cannot read ({e.strerror or e}): check permissions") from None


def _header(data: bytes, fail) -> tuple[dict[str, str], dict]:
    """The safetensors header, bounded and checked before the reference parser sees the file."""
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise fail("is a Python pickle, which FLX Engine never loads: save the face model as .safetensors")
    if data[:4] == b"PK\x03\x04":
        raise fail("is a PyTorch (zip + pickle) archive, which FLX Engine never loads: save it as .safetensors")
    if len(data) > MAX_FILE_BYTES:
        raise fail(f"file is over the {MAX_FILE_BYTES}-byte limit: not a ReActor face model")
    if len(data) < 8:
        raise fail("file is truncated (shorter than the 8-byte header length): not a ReActor face model")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise fail(f"declares a {n}-byte header in a {len(data)}-byte file: not a safetensors face model")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"), object_pairs_hook=_no_dupes)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise fail(f"header is not valid JSON ({printable(e, limit=80)}): not a safetensors face model") from None
    if not isinstance(header, dict):
        raise fail("header is not a JSON object: not a safetensors face model")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) <= MAX_META_VALUE for k, v in meta.items()
    ):
        raise fail("metadata must map names to short strings: the file is damaged")
    if len(header) > MAX_TENSORS:
        raise fail(f"{len(header)} tensors, over the limit of {MAX_TENSORS}: not a ReActor face model")
    return meta, header


def _tensors(data: bytes, fail) -> dict[str, tuple[str, list[int], bytes]]:
    from safetensors import SafetensorError, deserialize

    try:
        items = deserialize(data)
    except (SafetensorError, ValueError, TypeError, OverflowError, KeyError) as e:
        raise fail(f"not a valid safetensors file ({printable(e, limit=80)})") from None
    return {name: (t["dtype"], list(t["shape"]), bytes(t["data"])) for name, t in items}


def _field(name: str, t: tuple[str, list[int], bytes], fail) -> np.ndarray:
    """One known ReActor field, checked for dtype, shape and finite values."""
    shape, dtypes = FIELDS[name]
    dtype, got, buf = t
    if dtype not in dtypes:
        raise fail(f"'{name}' is {printable(dtype, limit=10)}, not {'/'.join(dtypes)}: not a ReActor face model")
    if tuple(got) != shape:
        if name == "embedding" and len(got) == 1:
            raise fail(f"embedding has {got[0]} values: ReActor face models hold a 512-value ArcFace embedding")
        raise fail(f"'{name}' has shape {got}, ReActor writes {list(shape)}: the file is damaged")
    arr = np.frombuffer(buf, dtype=dtypes[dtype]).reshape(shape).astype(np.float64)
    if not np.isfinite(arr).all():
        raise fail(f"'{name}' holds NaN or infinite values: the file is damaged")
    return arr


def read_reactor(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, str]]:
    """(raw embedding, metadata) of a ReActor face model file. Every problem is one-line `CharacterFileError`."""
    p = Path(path)
    source = printable(p.name, limit=120)

    def fail(msg: str) -> CharacterFileError:
        return CharacterFileError(f"{source}: {msg}")

    data = _read_bounded(p, fail)
    meta, _ = _header(data, fail)
    tensors = _tensors(data, fail)
    fields = {k: _field(k, t, fail) for k, t in tensors.items() if k in FIELDS}  # other keys: ignored
    if "embedding" not in fields:
        raise fail(f"has no 'embedding' tensor (has: {', '.join(sorted(tensors)[:9]) or 'none'}): not a face model")
    emb = fields["embedding"]
    norm = float(np.linalg.norm(emb))
    if not (0.0 < norm <= MAX_EMBEDDING_NORM):
        raise fail(f"embedding has norm {norm:g}: a zero or huge vector is not a face; rebuild the face model")
    return emb, meta


def import_reactor(path: str | os.PathLike, name: str, info, *, now: str | None = None) -> Character:
    """Version 1 of an embedding-only character (no references) from a ReActor face model `.safetensors`.

    ReActor files do not record which model made their vector, so `info` (the `EncoderInfo` of this machine's
    analyzer for the encoder the user chose) is what the embedding is recorded under, and `change` says so. Files
    exported by FLX Engine do record it, and one made by another model file is refused.

    Raises:
        `CharacterFileError` (one line naming the file): unreadable, pickled, oversized or malformed files, a bad
        name, or an encoder that is not 512-d buffalo_l ArcFace.
    """
    import engine

    p = Path(path)
    source = printable(p.name, limit=120)
    try:
        name = validate_name(name)
    except InputError as e:
        raise CharacterFileError(f"{source}: {e}") from None
    why = _check_encoder(info.encoder_id, info.dim, info.metric)
    if why:
        raise CharacterFileError(f"{source}: {why}: import with --encoder {DEFAULT_ENCODER}")
    if info.model_sha256 is None:
        raise CharacterFileError(f"{source}: encoder {info.encoder_id} has no model hash: install its weights pack")
    emb, meta = read_reactor(p)
    recorded = meta.get("flx_model_sha256")
    if recorded is not None and recorded != info.model_sha256:
        raise CharacterFileError(
            f"{source}: exported from FLX Engine with model file {printable(recorded, limit=12)}…, but "
            f"{info.encoder_id} here is {info.model_sha256[:12]}…: import it with the encoder it was made with"
        )
    stamp = now or utc_now()
    embeddings = EncoderEmbeddings(
        encoder_id=info.encoder_id,
        dim=DIM,
        metric="cosine",
        threshold=float(info.threshold),
        model_sha256=info.model_sha256,
        merge="imported-reactor-face-model-unit",
        vector=(emb / np.linalg.norm(emb)).astype(np.float32).tolist(),
    )
    return Character(
        id=str(uuid.uuid4()),
        name=name,
        version=1,
        created=stamp,
        updated=stamp,
        engine_version=engine.__version__,
        change=f"imported from ReActor face model {printable(p.name, limit=200)}; encoder {info.encoder_id} as chosen "
        "at import (ReActor files do not record which model made them)",
        embeddings={info.encoder_id: embeddings},
    )


__all__ = ["DEFAULT_ENCODER", "FIELDS", "export_reactor", "import_reactor", "reactor_bytes", "read_reactor"]
