"""docs/flx-format.md describes what the code writes: metadata keys, version, document keys, tensor names, limits."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from characters_helpers import make_character

from engine.characters import flx_format, to_bytes

SPEC = (Path(__file__).resolve().parents[2] / "docs" / "flx-format.md").read_text(encoding="utf-8")


def _header(data: bytes) -> dict:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])


def test_metadata_and_version_match_the_spec():
    header = _header(to_bytes(make_character("spec", n_refs=2)))
    meta = header["__metadata__"]
    assert sorted(meta) == ["flx", "format", "format_version"]
    assert f'`format` | `"{meta["format"]}"`' in SPEC
    assert f'`"{meta["format_version"]}"`' in SPEC and f"format {meta['format_version']}" in SPEC
    doc = json.loads(meta["flx"])
    for key in doc:  # every top-level document key is in the spec's example
        assert f'"{key}"' in SPEC, key
    for key in doc["character"]:
        assert f'"{key}"' in SPEC, key


def test_every_written_tensor_name_is_documented():
    header = _header(to_bytes(make_character("spec", n_refs=2)))
    documented = [
        r"emb\.[^.]+(?:\.[^.]+)*\.merged",
        r"emb\..+\.ref\.\d+",
        r"ref\.\d+\.aligned",
        r"ref\.\d+\.head",
    ]
    for pattern_in_spec in (
        "`emb.<encoder_id>.merged`",
        "`emb.<encoder_id>.ref.<i>`",
        "`ref.<i>.aligned`",
        "`ref.<i>.head`",
        "`lora.safetensors`",
    ):
        assert pattern_in_spec in SPEC
    names = [k for k in header if k != "__metadata__"]
    assert names
    for name in names:
        assert any(re.fullmatch(p, name) for p in documented), name


def test_limits_in_the_spec_are_the_code_limits():
    assert f"{flx_format.MAX_HEADER_BYTES // 1024**2} MiB" in SPEC
    assert f"| {flx_format.MAX_FILE_BYTES // 1024**2} MiB |" in SPEC
    assert f"`lora.safetensors`: {flx_format.MAX_LORA_BYTES // 1024**2} MiB" in SPEC
    assert f"| {flx_format.MAX_TENSORS} |" in SPEC
    assert f"{flx_format.MAX_TENSOR_BYTES // 1024**2} MiB" in SPEC
    assert f"| {flx_format.MAX_REFERENCES} |" in SPEC
