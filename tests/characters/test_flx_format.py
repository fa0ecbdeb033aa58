"""The `.flx` reader/writer: determinism, forward compatibility, and refusal of every malformed file."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from characters_helpers import make_character, repack, unpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine._core.errors import CharacterFileError
from engine.characters import CharacterLibrary, from_bytes, inspect_flx, read_flx, to_bytes, write_flx


@pytest.fixture(scope="module")
def good() -> bytes:
    return to_bytes(make_character())


def test_round_trip_is_byte_identical_and_plain_safetensors(good):
    loaded = from_bytes(good)
    assert loaded.warnings == []
    assert to_bytes(loaded.character) == good
    ch = loaded.character
    assert ch.references[1].head_crop == make_character().references[1].head_crop
    assert (
        ch.embeddings["dlib-resnet-v1"].per_reference[0]
        == make_character().embeddings["dlib-resnet-v1"].per_reference[0]
    )

    from safetensors.numpy import load

    tensors = load(good)  # the reference parser reads our container
    assert tensors["emb.dlib-resnet-v1.merged"].dtype == np.float32
    assert tensors["ref.0.aligned"].dtype == np.uint8


def test_no_references_option_strips_crops_only(good):
    slim = to_bytes(from_bytes(good).character, include_references=False)
    ch = from_bytes(slim).character
    assert not ch.references_included
    assert all(r.head_crop is None and r.aligned_png is None for r in ch.references)
    assert ch.references[0].quality["status"] == "ok"
    assert len(ch.embeddings["dlib-resnet-v1"].vector) == 128
    assert len(slim) < len(good)
    assert to_bytes(ch) == slim


def test_newer_minor_loads_with_warning_and_keeps_unknown_fields(good, tmp_path):
    _, doc, tensors = unpack(good)
    doc["character"]["mood_board"] = {"colours": ["teal"]}
    doc["character"]["profile"]["signature_scent"] = "cedar"
    doc["character"]["references"][0]["lighting"] = "softbox"
    doc["render_hints"] = {"cfg": 4.5}
    tensors["future.feature"] = ("F32", [2], np.array([1.5, 2.5], "<f4").tobytes())
    newer = repack(doc, tensors, version="1.7")
    path = tmp_path / "newer.flx"
    path.write_bytes(newer)

    loaded = read_flx(path)
    assert len(loaded.warnings) == 1 and "1.7" in loaded.warnings[0]
    again = from_bytes(to_bytes(loaded.character))  # written back as 1.0 by this engine
    ch = again.character
    assert ch.model_extra["mood_board"] == {"colours": ["teal"]}
    assert ch.profile.model_extra["signature_scent"] == "cedar"
    assert ch.references[0].model_extra["lighting"] == "softbox"
    assert ch._doc_extra == {"render_hints": {"cfg": 4.5}}
    assert ch.extra_tensors["future.feature"][2] == np.array([1.5, 2.5], "<f4").tobytes()
    assert inspect_flx(path)["warnings"]


def _flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0x01
    return bytes(b)


def _bad_files(good: bytes) -> dict[str, tuple[bytes, str]]:
    (n,) = struct.unpack("<Q", good[:8])
    _, doc, tensors = unpack(good)
    name_pos = good.index(b"auburn")
    evil = dict(tensors)
    evil["../../etc/passwd"] = evil.pop("ref.0.head")
    return {
        "truncated": (good[: len(good) - 7], "truncated"),
        "truncated-header": (good[: 8 + n // 2], "truncated"),
        "tiny": (good[:5], "truncated"),
        "random": (random.Random(0).randbytes(4096), ""),
        "empty": (b"", "truncated"),
        "tensor-byte-flipped": (_flip(good, len(good) - 3), "checksum mismatch"),
        "profile-byte-flipped": (good[:name_pos] + b"aubure" + good[name_pos + 6 :], "checksum mismatch"),
        "unsigned-edit": (repack({**doc, "character": {**doc["character"], "name": "eve"}}, tensors, fix_checksum=False), "checksum"),
        "huge-header": (struct.pack("<Q", 2**40) + good[8:], "limit"),
        "major-2": (repack(doc, tensors, version="2.0"), "upgrade FLX Engine"),
        "dotdot-name": (repack(doc, evil), "unsafe tensor name"),
        "absolute-name": (repack(doc, {**tensors, "/abs": ("U8", [1], b"x")}), "unsafe tensor name"),
        "control-name": (repack(doc, {**tensors, "a\x07b": ("U8", [1], b"x")}), "unsafe tensor name"),
        "not-flx": (repack(doc, tensors)[:0] + struct.pack("<Q", 8) + b'{"a":1} ', "not an FLX character"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case",
    ["truncated", "truncated-header", "tiny", "random", "empty", "tensor-byte-flipped", "profile-byte-flipped",
     "unsigned-edit", "huge-header", "major-2", "dotdot-name", "absolute-name", "control-name", "not-flx"],
)  # fmt: skip
def test_malformed_files_raise_one_line_and_leave_library_untouched(good, tmp_path, case):
    data, expect = _bad_files(good)[case]
    lib = CharacterLibrary(tmp_path / "lib.sqlite")
    lib.add(make_character("keeper"))
    before = (lib.list(), lib.log("keeper"))
    path = tmp_path / f"{case}.flx"
    path.write_bytes(data)

    with pytest.raises(CharacterFileError) as err:
        lib.import_file(path)
    msg = str(err.value)
    assert "\n" not in msg and f"{case}.flx" in msg
    assert expect.lower() in msg.lower()
    assert (lib.list(), lib.log("keeper")) == before
    with pytest.raises(CharacterFileError):
        inspect_flx(path)


def test_write_is_atomic_and_reads_back(tmp_path):
    ch = make_character()
    p = write_flx(ch, tmp_path / "a.flx")
    assert read_flx(p).character.name == "ava"
    assert [f.name for f in tmp_path.iterdir()] == ["a.flx"]


# --------------------------------------------------------------------------- fuzzing: only CharacterFileError


def _small_good() -> bytes:
    return to_bytes(make_character(n_refs=1))


SMALL = _small_good()


def _only_file_errors(data: bytes) -> None:
    try:
        from_bytes(data)
    except CharacterFileError as e:
        assert "\n" not in str(e)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data):
    _only_file_errors(data)
    _only_file_errors(SMALL[:8] + data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, len(SMALL) - 1), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, len(SMALL)),
    st.binary(max_size=16),
)
def test_fuzz_mutated_valid_file(edits, cut, insert):
    b = bytearray(SMALL)
    for pos, val in edits:
        b[pos] = val
    _only_file_errors(bytes(b))
    _only_file_errors(bytes(b[:cut]) + insert + bytes(b[cut:]))
    _only_file_errors(SMALL[:cut])


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**64 - 1))
def test_fuzz_declared_header_length(n):
    _only_file_errors(struct.pack("<Q", n) + SMALL[8:])


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=8,
)  # fmt: skip


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


_META, _DOC, _TENSORS = unpack(SMALL)
_DOC.pop("integrity")
_DOC_PATHS = [p for p in _paths(_DOC) if p]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_DOC_PATHS), _JSON, st.booleans())
def test_fuzz_re_signed_documents(path, value, drop_tensor):
    """Hostile but correctly signed files: any field replaced by any JSON value, or a tensor missing."""
    import copy

    doc = copy.deepcopy(_DOC)
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    tensors = dict(_TENSORS)
    if drop_tensor:
        tensors.pop(sorted(tensors)[len(path) % len(tensors)])
    _only_file_errors(repack(doc, tensors))


def test_lora_round_trip_and_tamper_check(good):
    from safetensors.numpy import save

    from engine.characters import attach_lora

    lora = save({"unet.mid.to_q.lora_A.weight": np.ones((4, 2), np.float32)}, metadata={"peft": "cfg"})
    ch = attach_lora(from_bytes(good).character, lora, "stabilityai/sdxl-base-1.0", now="2025-01-02T00:00:00Z")
    data = to_bytes(ch)
    back = from_bytes(data).character
    assert back.lora.data == lora and back.lora.base_model_id == "stabilityai/sdxl-base-1.0" and back.version == 2
    assert to_bytes(back) == data
    _, doc, tensors = unpack(data)
    tensors["lora.safetensors"] = ("U8", [len(lora)], lora[:-1] + b"!")
    with pytest.raises(CharacterFileError, match="LoRA data does not match"):
        from_bytes(repack(doc, tensors))


def test_size_caps_are_checked_before_reading(good, tmp_path, monkeypatch):
    import engine.characters.flx_format as fmt

    path = tmp_path / "big.flx"
    path.write_bytes(good)
    monkeypatch.setattr(fmt, "MAX_FILE_BYTES", len(good) - 1)
    with pytest.raises(CharacterFileError, match="over the .* limit"):
        read_flx(path)
    monkeypatch.setattr(fmt, "MAX_FILE_BYTES", 2 * 1024**3)
    monkeypatch.setattr(fmt, "MAX_TENSOR_BYTES", 100)  # the 300/500-byte crops now exceed the per-tensor cap
    with pytest.raises(CharacterFileError, match="declares .* bytes, over the"):
        read_flx(path)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(_TENSORS)), st.sampled_from(["dtype", "shape", "data_offsets", None]), _JSON)
def test_fuzz_tensor_headers(name, key, value):
    """Container headers with any field of a tensor entry (or the whole entry) replaced by any JSON value."""
    import json as _json

    (n,) = struct.unpack("<Q", SMALL[:8])
    header = _json.loads(SMALL[8 : 8 + n])
    if key is None:
        header[name] = value
    else:
        header[name][key] = value
    head = _json.dumps(header).encode()
    _only_file_errors(struct.pack("<Q", len(head)) + head + SMALL[8 + n :])
