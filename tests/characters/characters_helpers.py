"""Helpers for character tests: a small synthetic record (fast format/library tests) and a file re-packer."""

from __future__ import annotations

import json
import struct

import numpy as np

from engine.characters.flx_format import content_sha256, pack_safetensors
from engine.characters.schema import Character, CharacterProfile, EncoderEmbeddings, ReferenceRecord


def make_character(name: str = "ava", *, tags=("hero",), seed: int = 0, n_refs: int = 2) -> Character:
    """A character with real-looking parts (random vectors, small byte crops), no face analysis needed."""
    rng = np.random.default_rng(seed)
    refs = [
        ReferenceRecord(
            source_filename=f"ref{i}.jpg",
            source_sha256=f"{i:064x}",
            weight=1.0 + i,
            image_size=(640, 480),
            box=(10.0, 20.0, 110.0, 120.0),
            landmarks=[(float(x), float(y)) for x, y in rng.uniform(0, 100, (5, 2))],
            kps5=[(float(x), float(y)) for x, y in rng.uniform(0, 100, (5, 2))],
            quality={"status": "ok", "checks": [{"name": "face_size", "status": "ok", "value": 100.0}]},
            aligned_png=rng.integers(0, 255, 300, dtype=np.uint8).tobytes(),
            head_crop=rng.integers(0, 255, 500, dtype=np.uint8).tobytes(),
        )
        for i in range(n_refs)
    ]
    vecs = [rng.normal(size=128).astype(np.float32) for _ in range(n_refs)]
    emb = EncoderEmbeddings(
        encoder_id="dlib-resnet-v1", dim=128, metric="euclidean", threshold=0.6, model_sha256="ab" * 32,
        vector=np.mean(vecs, axis=0).astype(np.float32).tolist(), per_reference=[v.tolist() for v in vecs],
    )  # fmt: skip
    return Character(
        name=name,
        created="2025-01-01T00:00:00Z",
        updated="2025-01-01T00:00:00Z",
        engine_version="0.1.0",
        profile=CharacterProfile(hair_colour="auburn", tags=list(tags), anchor_details=[{"description": "mole"}]),
        references=refs,
        embeddings={"dlib-resnet-v1": emb},
    )


def unpack(data: bytes) -> tuple[dict, dict, dict[str, tuple[str, list[int], bytes]]]:
    """(metadata, character document, tensors) of a `.flx` produced by the engine (no checks)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__")
    body = data[8 + n :]
    tensors = {
        k: (v["dtype"], v["shape"], body[v["data_offsets"][0] : v["data_offsets"][1]]) for k, v in header.items()
    }
    return meta, json.loads(meta["flx"]), tensors


def repack(doc: dict, tensors: dict, *, version: str | None = None, fix_checksum: bool = True) -> bytes:
    """Build a `.flx` from a (modified) document, re-signing it like a real (newer or hostile) writer would."""
    doc = dict(doc)
    if version:
        doc["format_version"] = version
    if fix_checksum:
        doc.pop("integrity", None)
        doc["integrity"] = {"algorithm": "sha256", "content_sha256": content_sha256(doc, tensors)}
    meta = {"format": "flx-character", "format_version": doc["format_version"],
            "flx": json.dumps(doc, sort_keys=True, separators=(",", ":"))}  # fmt: skip
    return pack_safetensors(meta, tensors)
