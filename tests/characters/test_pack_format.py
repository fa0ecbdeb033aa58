"""The pack images in a `.flx` (format 1.2): checked against their recorded sha256 on every read."""

from __future__ import annotations

import hashlib

import pytest
from characters_helpers import make_character, repack, unpack

from engine._core.errors import CharacterFileError
from engine.characters import from_bytes, to_bytes
from engine.characters.schema import PackImage


def test_a_tampered_pack_image_is_refused():
    ch = make_character("p")
    png = b"\x89PNG fake"
    ch.pack = [PackImage(shot="front-neutral", preset="x", seed=1, image_sha256=hashlib.sha256(png).hexdigest(),
                         image_png=png)]  # fmt: skip
    _meta, doc, tensors = unpack(to_bytes(ch))
    tensors["pack.0.image"] = ("U8", [len(png)], b"\x89PNG evil")
    with pytest.raises(CharacterFileError, match="pack image 0"):
        from_bytes(repack(doc, tensors))
