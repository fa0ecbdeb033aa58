"""A character's LoRA in the record: `attach_lora` checks the file and the trainer's info, the `.flx` and the library
round-trip it byte for byte, files from format 1.2 (LoRA with base/sha256/size only) still read, `show` lists it."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from characters_helpers import make_character, repack, unpack
from safetensors.numpy import save

from engine._core.errors import CharacterFileError, InputError
from engine.characters import CharacterLibrary, attach_lora, from_bytes, inspect_flx, to_bytes
from engine.characters.flx_format import FORMAT_VERSION_STR

NOW = "2025-01-02T00:00:00Z"


def lora_file(*, rank=4, alpha=8.0, prefix="unet", metadata=True, text_encoder=False, peft_keys=False) -> bytes:
    """A diffusers-format LoRA file as `save_lora_weights` writes it (`lora.down`/`lora.up` keys; peft's
    `lora_A`/`lora_B` with `peft_keys`), with its `lora_adapter_metadata`."""
    rng = np.random.default_rng(rank)
    down, up = ("lora_A", "lora_B") if peft_keys else ("lora.down", "lora.up")
    tensors = {}
    comps = [prefix] + (["text_encoder"] if text_encoder else [])
    for comp in comps:
        for mod in ("blocks.0.attn1.to_q", "blocks.0.attn1.to_k"):
            tensors[f"{comp}.{mod}.{down}.weight"] = rng.normal(size=(rank, 32)).astype(np.float32)
            tensors[f"{comp}.{mod}.{up}.weight"] = rng.normal(size=(32, rank)).astype(np.float32)
    meta = {"format": "pt"}
    if metadata:
        cfg = {}
        for comp in comps:
            cfg.update({f"{comp}.r": rank, f"{comp}.lora_alpha": alpha, f"{comp}.target_modules": ["to_q", "to_k"]})
        meta["lora_adapter_metadata"] = json.dumps(cfg, indent=2, sort_keys=True)
    return save(tensors, metadata=meta)


INFO = {
    "target": "sdxl-unet",
    "base_model_id": "tiny-sdxl-base",
    "base_model_sha256": "sha256:" + "c" * 64,
    "rank": 4,
    "alpha": 8.0,
    "text_encoder": False,
    "steps": 400,
    "trigger": "ohwx",
    "training_set": ["a" * 64, "b" * 64],
    "best_step": 300,
    "best_likeness": 81.25,
    "final_loss": 0.0625,
}


def test_attach_stores_a_new_version_with_the_trainers_info():
    base = make_character("ava")
    data = lora_file()
    ch = attach_lora(base, data, "tiny-sdxl-base", info=INFO, now=NOW)
    assert ch.version == base.version + 1 and base.lora is None and ch.id == base.id
    lora = ch.lora
    assert lora.data == data and lora.sha256 == hashlib.sha256(data).hexdigest() and lora.size == len(data)
    dumped = lora.model_dump(mode="json")
    assert {k: dumped[k] for k in INFO} == INFO
    assert "LoRA attached" in ch.change


def test_old_callers_without_info_still_work_and_the_file_fills_rank_and_alpha():
    ch = attach_lora(make_character(), lora_file(rank=8, alpha=4.0), "tiny-sdxl-base")
    assert (ch.lora.target, ch.lora.rank, ch.lora.alpha, ch.lora.text_encoder) == ("sdxl-unet", 8, 4.0, False)
    wan = attach_lora(make_character(), lora_file(prefix="transformer", peft_keys=True), "tiny-wan21-t2v-14b")
    assert wan.lora.target == "wan-transformer"


def test_flx_and_library_round_trip_bytes_and_info_identical(tmp_path):
    ch = attach_lora(make_character("ava"), lora_file(text_encoder=True), "tiny-sdxl-base",
                     info={**INFO, "text_encoder": True}, now=NOW)  # fmt: skip
    data = to_bytes(ch)
    back = from_bytes(data).character
    assert back.lora.data == ch.lora.data
    assert back.lora.model_dump(mode="json") == ch.lora.model_dump(mode="json")
    assert to_bytes(back) == data  # byte-identical re-export
    meta, doc, _ = unpack(data)
    assert meta["format_version"] == FORMAT_VERSION_STR == "1.3"
    assert doc["character"]["lora"]["trigger"] == "ohwx"
    with CharacterLibrary(tmp_path / "lib.sqlite") as lib:
        lib.add(ch)
        got = lib.get("ava")
        assert got.lora.data == ch.lora.data
        assert got.lora.model_dump(mode="json") == ch.lora.model_dump(mode="json")
    p = tmp_path / "ava.flx"
    p.write_bytes(data)
    summary = inspect_flx(p)["lora"]
    assert summary["rank"] == 4 and summary["best_likeness"] == 81.25 and summary["training_images"] == 2


def test_a_format_1_2_file_with_the_old_lora_record_still_reads():
    data = lora_file()
    ch = attach_lora(make_character("old"), data, "stabilityai/sdxl-base-1.0", now=NOW)
    _, doc, tensors = unpack(to_bytes(ch))
    doc["character"]["lora"] = {"base_model_id": "stabilityai/sdxl-base-1.0", "sha256": ch.lora.sha256,
                                "size": len(data)}  # fmt: skip
    loaded = from_bytes(repack(doc, tensors, version="1.2"))
    assert loaded.format_version == "1.2" and not loaded.warnings
    lora = loaded.character.lora
    assert lora.data == data and lora.base_model_id == "stabilityai/sdxl-base-1.0"
    assert (lora.target, lora.rank, lora.alpha, lora.steps, lora.trigger, lora.training_set) == (
        None, None, None, None, None, []
    )  # fmt: skip
    assert lora.text_encoder is False and lora.best_likeness is None


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("best_likeness", 101.0, "best_likeness"),
        ("rank", 0, "rank"),
        ("rank", "four", "rank"),
        ("steps", -1, "steps"),
        ("final_loss", float("inf"), "final_loss"),
        ("alpha", float("nan"), "alpha"),
        ("trigger", "two words", "trigger"),
        ("trigger", "x" * 65, "trigger"),
        ("training_set", ["not-a-sha"], "training_set"),
        ("training_set", ["a" * 64] * 1025, "training_set"),
        ("base_model_sha256", "md5:abc", "base_model_sha256"),
        ("best_step", 500, "best_step"),
        ("target", "sd15-unet", "target"),
    ],
)
def test_info_out_of_bounds_is_one_line(field, value, words):
    info = {**INFO, field: value}
    with pytest.raises(InputError, match=words) as e:
        attach_lora(make_character(), lora_file(), "tiny-sdxl-base", info=info)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "data, info, words",
    [
        (b"not a safetensors file at all", {}, "not a valid safetensors"),
        (save({"unet.lora_A": np.ones((4, 2), np.float32)}), {}, "not a diffusers sdxl-unet LoRA key"),
        (save({"model.diffusion_model.x.lora_A.weight": np.ones((4, 2), np.float32)}), {}, "not a diffusers"),
        (lora_file(prefix="transformer"), {"target": "sdxl-unet"}, "not a diffusers sdxl-unet LoRA key"),
        (lora_file(), {"rank": 16}, "rank 16 but the file has rank 4"),
        (lora_file(), {"alpha": 2.0}, "alpha 2.0 but the file's adapter metadata says 8.0"),
        (lora_file(metadata=False), {"rank": 4, "alpha": 8.0}, "no lora_adapter_metadata"),
        (lora_file(), {"text_encoder": True}, "does not adapt a text encoder"),
        (lora_file(), {"base_model_id": "other-base"}, "other-base"),
    ],
)
def test_bytes_that_are_not_the_stated_lora_are_refused(data, info, words):
    with pytest.raises(InputError, match=words) as e:
        attach_lora(make_character(), data, "tiny-sdxl-base", info=info)
    assert "\n" not in str(e.value)


def test_a_lora_without_metadata_whose_alpha_is_its_rank_is_accepted():
    ch = attach_lora(make_character(), lora_file(metadata=False), "tiny-sdxl-base", info={"rank": 4, "alpha": 4.0})
    assert ch.lora.alpha == 4.0


def test_size_is_bounded(monkeypatch):
    import engine.characters.flx_format as ff

    monkeypatch.setattr(ff, "MAX_LORA_BYTES", 100)
    with pytest.raises(InputError, match="over the 100 bytes a character can hold"):
        attach_lora(make_character(), lora_file(), "tiny-sdxl-base")


def test_a_tampered_lora_blob_is_refused_on_read():
    data = to_bytes(attach_lora(make_character(), lora_file(), "tiny-sdxl-base", info=INFO, now=NOW))
    _, doc, tensors = unpack(data)
    dtype, shape, blob = tensors["lora.safetensors"]
    tensors["lora.safetensors"] = (dtype, shape, blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(CharacterFileError, match="LoRA data does not match"):
        from_bytes(repack(doc, tensors))


def test_show_lists_the_lora(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from engine.cli.main import app

    ch = attach_lora(make_character("ava"), lora_file(), "tiny-sdxl-base", info=INFO, now=NOW)
    home = tmp_path / "home"
    monkeypatch.setenv("FLX_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "200")
    from engine._core.settings import EngineSettings

    with CharacterLibrary(EngineSettings(home=home).library_file) as lib:
        lib.add(ch)
    res = CliRunner().invoke(app, ["character", "show", "ava"])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if "LoRA:" in x)
    for words in ("rank 4 (alpha 8)", "base tiny-sdxl-base", "400 steps", "best likeness 81.2% at step 300",
                  "trigger 'ohwx'"):  # fmt: skip
        assert words in line, line
