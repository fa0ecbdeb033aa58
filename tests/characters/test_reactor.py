"""ReActor face models without face analysis: what the export writes, what the import accepts, and every hostile
file ending in one `CharacterFileError` line (the tiny-ArcFace round trip is tests/pipelines/test_reactor_interop.py).
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile

import numpy as np
import pytest
from characters_helpers import make_character

from engine._core.errors import CharacterFileError, InputError
from engine.characters import CharacterLibrary, from_bytes, identity_reference, to_bytes
from engine.characters.flx_format import pack_safetensors
from engine.characters.merge import merge_embeddings
from engine.characters.reactor import DEFAULT_ENCODER, MAX_FILE_BYTES, export_reactor, import_reactor, read_reactor
from engine.characters.schema import EncoderEmbeddings
from engine.identity.types import EncoderInfo

SHA = "cd" * 32
INFO = EncoderInfo(DEFAULT_ENCODER, 512, "cosine", 0.65, SHA)
# What ReActor's save_face_model writes (reactor_utils.py): name -> (safetensors dtype, shape)
REACTOR_LAYOUT = {
    "bbox": ("F32", [4]),
    "kps": ("F32", [5, 2]),
    "det_score": ("F32", []),
    "landmark_3d_68": ("F32", [68, 3]),
    "pose": ("F32", [3]),
    "landmark_2d_106": ("F32", [106, 2]),
    "embedding": ("F32", [512]),
    "gender": ("I64", []),
    "age": ("I64", []),
}


def arc_character(name: str = "ava", *, encoder_id: str = DEFAULT_ENCODER, seed: int = 1):
    """make_character plus a 512-d cosine embedding whose per-reference vectors have raw ArcFace norms (~20-30)."""
    ch = make_character(name, seed=seed)
    rng = np.random.default_rng(seed)
    raw = [rng.normal(size=512) * s for s in (1.0, 1.2)]  # norms ~22.6 and ~27
    info = EncoderInfo(encoder_id, 512, "cosine", 0.65, SHA)
    ch.embeddings[encoder_id] = EncoderEmbeddings(
        encoder_id=encoder_id, dim=512, metric="cosine", threshold=0.65, model_sha256=SHA,
        vector=merge_embeddings(raw, [r.weight for r in ch.references], info).tolist(),
        per_reference=[v.astype(np.float32).tolist() for v in raw],
    )  # fmt: skip
    return ch


def header_of(data: bytes) -> dict:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])


def tensors_of(path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def one_line(exc: BaseException, filename: str) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg.startswith(filename), msg
    return msg


def test_export_writes_reactors_nine_fields_with_its_dtypes_and_shapes(tmp_path):
    ch = arc_character()
    out = export_reactor(ch, tmp_path / "ava.safetensors")
    data = out.read_bytes()
    header = header_of(data)
    meta = header.pop("__metadata__")
    assert {k: (v["dtype"], v["shape"]) for k, v in header.items()} == REACTOR_LAYOUT
    t = tensors_of(out)
    emb = ch.embeddings[DEFAULT_ENCODER]
    # direction: the character's merged vector; length: the weighted mean norm of its raw reference vectors
    assert np.allclose(t["embedding"] / np.linalg.norm(t["embedding"]), emb.vector, atol=1e-6)
    norms = [np.linalg.norm(v) for v in emb.per_reference]
    weights = [r.weight for r in ch.references]
    assert np.linalg.norm(t["embedding"]) == pytest.approx(np.dot(norms, weights) / sum(weights), rel=1e-5)
    ref = ch.references[0]
    assert np.allclose(t["bbox"], ref.box) and np.allclose(t["kps"], ref.kps5)
    assert np.allclose(t["pose"], [ref.pose.pitch, ref.pose.yaw, ref.pose.roll])
    assert 0.0 <= float(t["det_score"]) <= 1.0 and int(t["gender"]) == 0 and int(t["age"]) == 0
    assert meta["flx_character_id"] == ch.id and meta["flx_character_version"] == str(ch.version)
    assert meta["flx_encoder_id"] == DEFAULT_ENCODER and meta["flx_model_sha256"] == SHA
    assert meta["generator"].startswith("FLX Engine ")
    assert export_reactor(ch, tmp_path / "again.safetensors").read_bytes() == data  # deterministic
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.safetensors", "ava.safetensors"]  # no temp files


def test_export_refuses_what_reactor_cannot_use_and_writes_nothing(tmp_path):
    out = tmp_path / "x.safetensors"
    dlib_only = make_character("ava")
    with pytest.raises(InputError) as e:
        export_reactor(dlib_only, out)
    assert f"run `flx character reembed ava --encoder {DEFAULT_ENCODER}`" in str(e.value)
    assert "has: dlib-resnet-v1" in str(e.value)
    with pytest.raises(InputError, match="not buffalo_l w600k_r50"):
        export_reactor(dlib_only, out, encoder_id="dlib-resnet-v1")
    antelope = arc_character(encoder_id="arcface-antelopev2-glintr100")
    with pytest.raises(InputError, match="not buffalo_l w600k_r50"):
        export_reactor(antelope, out, encoder_id="arcface-antelopev2-glintr100")
    euclid = arc_character()
    euclid.embeddings[DEFAULT_ENCODER].metric = "euclidean"
    with pytest.raises(InputError, match="512-d euclidean, not a 512-d cosine"):
        export_reactor(euclid, out)
    no_hash = arc_character()
    no_hash.embeddings[DEFAULT_ENCODER].model_sha256 = None
    with pytest.raises(InputError, match="records no model file"):
        export_reactor(no_hash, out)
    with pytest.raises(InputError, match=r"name the file x\.safetensors"):
        export_reactor(arc_character(), tmp_path / "x.flx")
    assert list(tmp_path.iterdir()) == []


def test_import_is_an_embedding_only_character_under_the_chosen_encoder(tmp_path):
    ch = arc_character()
    out = export_reactor(ch, tmp_path / "ava.safetensors")
    imp = import_reactor(out, "ava-reactor", INFO)
    assert imp.version == 1 and imp.id != ch.id and imp.name == "ava-reactor" and imp.references == []
    emb = imp.embeddings[DEFAULT_ENCODER]
    assert (emb.dim, emb.metric, emb.threshold, emb.model_sha256) == (512, "cosine", 0.65, SHA)
    assert emb.per_reference == [] and "ava.safetensors" in imp.change and "chosen at import" in imp.change
    ref = identity_reference(imp, INFO)
    assert np.allclose(ref.embedding, ch.embeddings[DEFAULT_ENCODER].vector, atol=1e-6)
    assert np.linalg.norm(ref.embedding) == pytest.approx(1.0, abs=1e-6)  # unit, like every cosine identity
    # it is a normal library character: stored, exported to .flx and read back
    with CharacterLibrary(tmp_path / "lib.sqlite") as lib:
        lib.add(imp)
        back = from_bytes(to_bytes(lib.get("ava-reactor"))).character
    assert back.embeddings[DEFAULT_ENCODER].vector == emb.vector
    # re-exported without references: same direction, the nominal raw norm, zeros for the face fields
    t = tensors_of(export_reactor(imp, tmp_path / "again.safetensors"))
    assert np.linalg.norm(t["embedding"]) == pytest.approx(np.sqrt(512), rel=1e-5)
    assert np.allclose(t["embedding"] / np.sqrt(512), emb.vector, atol=1e-6)
    assert not t["bbox"].any() and not t["kps"].any()


def test_import_reads_a_file_saved_the_way_reactor_saves_it(tmp_path):
    """ReActor's save_face_model: `torch.tensor(face[k])` of insightface's numpy values, `save_file`, no metadata."""
    import torch
    from safetensors.torch import save_file

    rng = np.random.default_rng(5)
    raw = rng.normal(size=512).astype(np.float32) * 1.1
    face = {
        "bbox": np.array([10, 20, 110, 140], np.float32),
        "kps": rng.uniform(0, 100, (5, 2)).astype(np.float32),
        "det_score": np.float32(0.87),
        "landmark_3d_68": rng.uniform(0, 100, (68, 3)).astype(np.float32),
        "pose": np.array([1.0, -3.0, 0.5], np.float32),
        "landmark_2d_106": rng.uniform(0, 100, (106, 2)).astype(np.float32),
        "embedding": raw,
        "gender": np.int64(1),
        "age": 31,
    }
    path = tmp_path / "someone.safetensors"
    save_file({k: torch.tensor(v) for k, v in face.items()}, str(path))
    assert header_of(path.read_bytes()).get("__metadata__") is None
    emb, meta = read_reactor(path)
    assert meta == {} and np.allclose(emb, raw)
    imp = import_reactor(path, "someone", INFO)
    assert np.allclose(imp.embeddings[DEFAULT_ENCODER].vector, raw / np.linalg.norm(raw), atol=1e-6)


def test_import_refuses_bad_names_and_encoders_that_are_not_buffalo_l(tmp_path):
    out = export_reactor(arc_character(), tmp_path / "ava.safetensors")
    for name in ("", "a\x00b", "evil\u202e"):
        with pytest.raises(CharacterFileError) as e:
            import_reactor(out, name, INFO)
        one_line(e.value, "ava.safetensors")
    cases = [
        (EncoderInfo("dlib-resnet-v1", 128, "euclidean", 0.6, SHA), "not buffalo_l"),
        (EncoderInfo("arcface-antelopev2-glintr100", 512, "cosine", 0.65, SHA), "not buffalo_l"),
        (EncoderInfo(DEFAULT_ENCODER, 128, "cosine", 0.65, SHA), "128-d cosine"),
        (EncoderInfo(DEFAULT_ENCODER, 512, "cosine", 0.65, None), "no model hash"),
        (EncoderInfo(DEFAULT_ENCODER, 512, "cosine", 0.65, "ef" * 32), "with model file cdcdcdcdcdcd"),
    ]
    for info, why in cases:
        with pytest.raises(CharacterFileError, match=why) as e:
            import_reactor(out, "x", info)
        one_line(e.value, "ava.safetensors")


def _reactor_tensors(**override) -> dict[str, tuple[str, list[int], bytes]]:
    """A valid ReActor-layout tensor dict (raw bytes), with fields replaced or removed (None) by `override`."""
    rng = np.random.default_rng(0)
    out = {}
    for name, (dtype, shape) in REACTOR_LAYOUT.items():
        arr = (rng.normal(size=shape) if dtype == "F32" else np.zeros(shape)).astype(
            "<f4" if dtype == "F32" else "<i8"
        )
        out[name] = (dtype, shape, arr.tobytes())
    for k, v in override.items():
        if v is None:
            out.pop(k)
        else:
            out[k] = v
    return out


def _f32(arr) -> tuple[str, list[int], bytes]:
    a = np.asarray(arr, dtype="<f4")
    return "F32", list(a.shape), a.tobytes()


class _Boom:
    """Unpickling this writes a marker file: the proof that nothing was unpickled is that the marker is absent."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _torch_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return buf.getvalue()


def _hostile(tmp_path) -> dict[str, tuple[str, bytes, str]]:
    """case -> (file name, bytes, expected message part)."""
    marker = tmp_path / "unpickled"
    _Boom.marker = str(marker)
    evil = pickle.dumps({"embedding": _Boom()}, protocol=4)
    nan = np.zeros(512, np.float32)
    nan[3] = np.nan
    inf_box = np.array([0, 0, np.inf, 1], np.float32)
    huge_header = struct.pack("<Q", 10 * 1024**2) + b"\0" * (10 * 1024**2)
    many = {f"extra_{i}": _f32([1.0]) for i in range(70)}
    bad_meta = pack_safetensors({"flx_model_sha256": "x" * 5000}, _reactor_tensors())
    dup = (
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    )
    return {
        "pickle bytes": ("face.safetensors", evil, "Python pickle"),
        "ipadpt": ("face.ipadpt", evil, "never loads"),
        "torch zip": ("face.safetensors", _torch_zip(), "PyTorch (zip + pickle) archive"),
        "wrong shape": ("face.safetensors", pack_safetensors({}, _reactor_tensors(kps=_f32(np.zeros((5, 3))))), "shape"),
        "2-d embedding": ("face.safetensors", pack_safetensors({}, _reactor_tensors(embedding=_f32(np.ones((1, 512))))), "[1, 512]"),
        "NaN": ("face.safetensors", pack_safetensors({}, _reactor_tensors(embedding=_f32(nan))), "NaN"),
        "inf box": ("face.safetensors", pack_safetensors({}, _reactor_tensors(bbox=_f32(inf_box))), "NaN or infinite"),
        "zero vector": ("face.safetensors", pack_safetensors({}, _reactor_tensors(embedding=_f32(np.zeros(512)))), "norm 0"),
        "10 MB header of zeros": ("face.safetensors", huge_header, "limit"),
        "header past the end": ("face.safetensors", struct.pack("<Q", 10 * 1024**2) + b"{}", "10485760-byte header"),
        "missing embedding": ("face.safetensors", pack_safetensors({}, _reactor_tensors(embedding=None)), "no 'embedding'"),
        "4096-d": ("face.safetensors", pack_safetensors({}, _reactor_tensors(embedding=_f32(np.ones(4096)))), "4096 values"),
        "BF16": ("face.safetensors", pack_safetensors({}, _reactor_tensors(embedding=("BF16", [512], b"\x80\x3f" * 512))), "BF16"),
        "int embedding": ("face.safetensors", pack_safetensors({}, _reactor_tensors(embedding=("I64", [512], b"\1" * 4096))), "I64"),
        "too many tensors": ("face.safetensors", pack_safetensors({}, {**_reactor_tensors(), **many}), "over the limit"),
        "long metadata": ("face.safetensors", bad_meta, "metadata"),
        "duplicate keys": ("face.safetensors", struct.pack("<Q", len(dup)) + dup + b"\0" * 4, "duplicate key"),
        "truncated": ("face.safetensors", pack_safetensors({}, _reactor_tensors())[:-100], "not a valid safetensors"),
        "garbage": ("face.safetensors", b"hello world, not a face model", "header"),
        "empty": ("face.safetensors", b"", "truncated"),
    }  # fmt: skip


def test_hostile_files_are_one_line_character_file_errors_and_nothing_is_unpickled(tmp_path):
    cases = _hostile(tmp_path)
    for case, (filename, data, why) in cases.items():
        folder = tmp_path / case.replace(" ", "-")
        folder.mkdir()
        path = folder / filename
        path.write_bytes(data)
        with pytest.raises(CharacterFileError) as e:
            import_reactor(path, "x", INFO)
        msg = one_line(e.value, filename)
        assert why in msg, (case, msg)
    assert not (tmp_path / "unpickled").exists()
    # the check itself can fail: the same payload, unpickled, does write the marker
    pickle.loads(cases["pickle bytes"][1])
    assert (tmp_path / "unpickled").exists()


def test_oversized_missing_and_non_files_are_refused_before_reading(tmp_path):
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:  # sparse: refused from its size, never read
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(CharacterFileError, match="over the 1048576 limit"):
        import_reactor(big, "x", INFO)
    with pytest.raises(CharacterFileError, match="file not found"):
        import_reactor(tmp_path / "nope.safetensors", "x", INFO)
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(CharacterFileError, match="not a regular file"):
        import_reactor(tmp_path / "dir.safetensors", "x", INFO)
