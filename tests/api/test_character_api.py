"""`Engine.characters` (engine/api_characters.py): the one character surface, on the real test photos and the real
dlib analyzer. Every front end (CLI, jobs, server, Ray) calls these methods, so their behaviour is tested here."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import numpy as np
import pytest

from engine._core.errors import CharacterFileError, CharacterNotFound, ConfigError, InputError
from engine._core.settings import EngineSettings
from engine.api import Engine

REPO = Path(__file__).resolve().parents[2]
DLIB = "dlib-resnet-v1"


def _engine(home: Path) -> Engine:
    return Engine(EngineSettings(home=home, outputs_dir=home / "outputs", archive_after_days=None))


@pytest.fixture(scope="module")
def eng(tmp_path_factory) -> Engine:
    return _engine(tmp_path_factory.mktemp("api") / "home")


@pytest.fixture(scope="module")
def ava(eng, faces_dir):
    """'ava' v1 from obama.jpg, then v2 with obama2.jpg added through the API (module-wide: dlib is slow)."""
    v1 = eng.characters.create("ava", [faces_dir / "obama.jpg"], profile={"hair_colour": "black", "tags": ["hero"]})
    v2 = eng.characters.add_references("ava", [str(faces_dir / "obama2.jpg") + ":0.5"])
    return v1, v2


def test_the_api_is_one_object_per_engine_and_uses_its_warm_analyzer(tmp_path, faces_dir):
    fresh = _engine(tmp_path / "home")
    assert fresh.characters is fresh.characters
    assert fresh._analyzers is None  # nothing loaded until a call needs it
    fresh.characters.create("warm", [faces_dir / "obama.jpg"])
    first = fresh.analyzer(DLIB)
    assert fresh._analyzers is not None and fresh._analyzers._items == {DLIB: first}  # the API went through it
    fresh.characters.add_references("warm", [faces_dir / "obama2.jpg"])
    assert fresh.analyzer(DLIB) is first and fresh._analyzers._items == {DLIB: first}  # reused, not reloaded
    assert [v.version for v in fresh.characters.log("warm")] == [1, 2]


def test_add_references_makes_a_version_equal_to_creating_from_all_photos(eng, ava, faces_dir):
    v1, v2 = ava
    assert (v1.version, len(v1.references)) == (1, 1)
    assert (v2.version, len(v2.references)) == (2, 2) and v2.id == v1.id
    assert v2.change == "added 1 reference(s)"
    assert [r.source_filename for r in v2.references] == ["obama.jpg", "obama2.jpg"]
    assert [r.weight for r in v2.references] == [1.0, 0.5]
    assert v2.profile.hair_colour == "black" and v2.profile.tags == ["hero"]  # the rest of v1 is kept
    emb = v2.embeddings[DLIB]
    assert len(emb.per_reference) == 2 and all(
        d is not None and d < emb.threshold for d in emb.leave_one_out_distances
    )
    assert not np.allclose(emb.vector, v1.embeddings[DLIB].vector)  # the new photo moved the identity

    # the same merge as a character made from both photos at once (negative control: v1 differs from it)
    both = eng.characters.create("both", [faces_dir / "obama.jpg", str(faces_dir / "obama2.jpg") + ":0.5"])
    ref = both.embeddings[DLIB]
    assert np.allclose(emb.vector, ref.vector, atol=1e-6)
    assert np.allclose(emb.leave_one_out_distances, ref.leave_one_out_distances, atol=1e-6)
    assert [r.source_sha256 for r in v2.references] == [r.source_sha256 for r in both.references]
    stored = eng.characters.get("ava")
    assert stored.version == 2 and np.allclose(stored.embeddings[DLIB].vector, emb.vector)
    assert [v.version for v in eng.characters.log("ava")] == [1, 2]


def test_add_references_refuses_another_person_unless_forced(eng, ava, faces_dir, tmp_path):
    with pytest.raises(InputError, match=r"biden\.jpg looks like a different person.*--force"):
        eng.characters.add_references("ava", [faces_dir / "biden.jpg"])
    with pytest.raises(InputError, match=r"obama\.jpg is already a reference"):
        eng.characters.add_references("ava", [faces_dir / "obama.jpg"])
    with pytest.raises(InputError, match="no reference photos"):
        eng.characters.add_references("ava", [])
    assert eng.characters.summary("ava").latest_version == 2  # nothing stored by the refusals

    # a separate character, so `ava` stays as the other tests expect it
    eng.characters.variant("ava", "ava-forced")
    forced = eng.characters.add_references("ava-forced", [faces_dir / "biden.jpg"], force=True)
    assert forced.version == 2 and len(forced.references) == 3
    assert forced.change == "added 1 reference(s) (outlier check overridden)"
    loo = forced.embeddings[DLIB].leave_one_out_distances
    assert loo[2] > forced.embeddings[DLIB].threshold  # recorded, not hidden
    with pytest.raises(CharacterNotFound):
        eng.characters.add_references("nobody", [faces_dir / "obama.jpg"])


def test_an_outlier_kept_with_force_does_not_block_a_good_new_photo(eng, faces_dir):
    refs = [faces_dir / "obama.jpg", faces_dir / "obama2.jpg", faces_dir / "biden.jpg"]
    mixed = eng.characters.create("mixed", refs, force=True)
    assert mixed.embeddings[DLIB].leave_one_out_distances[2] > mixed.embeddings[DLIB].threshold
    more = eng.characters.add_references("mixed", [faces_dir / "32bit.png"])  # only the new photo is checked
    assert more.version == 2 and more.change == "added 1 reference(s)"
    assert more.embeddings[DLIB].leave_one_out_distances[3] < more.embeddings[DLIB].threshold


def test_add_references_service_refusals_come_before_any_photo_is_read(eng, ava, tmp_path):
    from engine.characters.service import MAX_REFERENCES, add_references

    ch = ava[1]
    dlib = eng.analyzer(DLIB)
    missing = [tmp_path / "never-read.jpg"]  # a refusal that read the photo would say "not found" instead

    two = ch.model_copy(deep=True)
    two.embeddings["arcface-other"] = two.embeddings[DLIB].model_copy(update={"encoder_id": "arcface-other"})
    with pytest.raises(InputError, match="arcface-other embedding: adding references needs that analyzer"):
        add_references(two, missing, [dlib])
    stale = ch.model_copy(deep=True)
    stale.embeddings[DLIB].model_sha256 = "0" * 64
    with pytest.raises(InputError, match="another model file.*reembed ava --encoder dlib-resnet-v1"):
        add_references(stale, missing, [dlib])
    bare = ch.model_copy(update={"references": []}, deep=True)
    with pytest.raises(InputError, match="no reference photos"):
        add_references(bare, missing, [dlib])
    with pytest.raises(InputError, match=f"at most {MAX_REFERENCES}"):
        add_references(ch, missing * (MAX_REFERENCES - 1), [dlib])
    with pytest.raises(InputError, match="first analyzer"):
        add_references(ch, missing, [])
    with pytest.raises(InputError, match="never-read.jpg"):  # negative control: past the checks, the photo is read
        add_references(ch, missing, [dlib])


def test_variant_update_profile_rename(eng, ava):
    v1, v2 = ava
    var = eng.characters.variant("ava", "ava-red", wardrobe="red coat", notes="winter")
    assert var.id != v2.id and var.version == 1 and var.parent.character_id == v2.id and var.parent.version == 2
    assert (var.profile.wardrobe_baseline, var.profile.notes) == ("red coat", "winter")
    assert np.allclose(var.embeddings[DLIB].vector, v2.embeddings[DLIB].vector)

    upd = eng.characters.update_profile("ava-red", {"eye_colour": "brown"})
    assert upd.version == 2 and upd.profile.eye_colour == "brown" and upd.profile.wardrobe_baseline == "red coat"
    upd = eng.characters.update_profile("ava-red", {"notes": "spring"}, profile={"notes": "x", "hair_colour": "grey"})
    assert upd.version == 3 and (upd.profile.notes, upd.profile.hair_colour) == ("spring", "grey")  # changes win
    with pytest.raises(InputError, match="nothing to change"):
        eng.characters.update_profile("ava-red", {})
    with pytest.raises(InputError, match="mapping"):
        eng.characters.update_profile("ava-red", ["notes"])

    ren = eng.characters.rename("ava-red", "ava-blue")
    assert ren.name == "ava-blue" and ren.version == 4 and ren.id == var.id
    with pytest.raises(CharacterNotFound):
        eng.characters.get("ava-red")
    assert eng.characters.get("ava-blue", version=1).name == "ava-red"  # old versions keep the old name
    names = [s.name for s in eng.characters.list()]
    assert "ava-blue" in names and "ava-red" not in names
    assert [s.name for s in eng.characters.list(search="BLUE")] == ["ava-blue"]
    gone = eng.characters.delete("ava-blue")
    assert gone.id == var.id and "ava-blue" not in [s.name for s in eng.characters.list()]


def test_export_bytes_import_bytes_round_trip(eng, ava, tmp_path):
    from engine.characters import to_bytes

    data = eng.characters.export_bytes("ava")
    path = eng.characters.export("ava", tmp_path / "ava.flx")
    assert path.read_bytes() == data  # one writer for files and bytes

    other = _engine(tmp_path / "other-home")
    res = other.characters.import_bytes(data, source="ava.flx")
    assert (res.status, res.name, res.version, res.source, res.warnings) == ("added", "ava", 2, "ava.flx", ())
    got = other.characters.get("ava")
    assert to_bytes(got) == data  # byte-identical, crops, vectors and all
    assert got.model_dump() == eng.characters.get("ava").model_dump()
    assert [r.head_crop for r in got.references] == [r.head_crop for r in ava[1].references]
    assert other.characters.import_bytes(data, source="again.flx").status == "unchanged"

    v1 = eng.characters.export_bytes("ava", version=1, include_references=False)
    assert len(v1) < len(data)
    res = _engine(tmp_path / "third").characters.import_bytes(v1, source="v1.flx")
    assert (res.status, res.version) == ("added", 1)
    [res] = other.characters.import_path(path)  # the file reader, same result type
    assert (res.status, res.source, res.warnings) == ("unchanged", "ava.flx", ())


def test_import_bytes_refuses_damaged_data_and_writes_nothing(eng, ava, tmp_path):
    data = eng.characters.export_bytes("ava")
    (n,) = struct.unpack("<Q", data[:8])
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    lib = _engine(tmp_path / "home")
    bad = {
        "empty": b"",
        "text": b"not a character file at all",
        "truncated": data[:-100],
        "header only": data[: 8 + n],
        "huge header length": struct.pack("<Q", 2**40) + data[8:],
        "tampered body": bytes(flipped),
    }
    for what, blob in bad.items():
        with pytest.raises(CharacterFileError, match="upload.flx"):
            lib.characters.import_bytes(blob, source="upload.flx")
        assert lib.characters.list(include_archived=True) == [], what
    with pytest.raises(InputError, match="bytes"):
        lib.characters.import_bytes(str(data[:20]), source="x.flx")
    with pytest.raises(CharacterFileError, match=r"\\x1b\[2J"):  # the label is shown, never obeyed
        lib.characters.import_bytes(b"junk", source="\x1b[2J.flx")
    assert lib.characters.list(include_archived=True) == []
    # negative control: the intact bytes import into the same library
    assert lib.characters.import_bytes(data, source="upload.flx").status == "added"
    assert [s.name for s in lib.characters.list()] == ["ava"]


def test_inputs_are_checked_before_any_photo_is_read(eng, tmp_path, faces_dir):
    with pytest.raises(InputError, match="face number"):
        eng.characters.create("x", [faces_dir / "obama.jpg"], face=-1)
    with pytest.raises(InputError, match="above 0"):
        eng.characters.create("x", [str(faces_dir / "obama.jpg") + ":0"])
    with pytest.raises(InputError, match="profile key 'tags'"):
        eng.characters.create("x", [faces_dir / "obama.jpg"], profile={"tags": 3})
    with pytest.raises(ConfigError, match="no.yaml"):
        eng.characters.create("x", [faces_dir / "obama.jpg"], profile=tmp_path / "no.yaml")
    with pytest.raises(InputError, match="a path"):
        eng.characters.create("x", [3])
    assert "x" not in [s.name for s in eng.characters.list()]


def _imports(path: Path) -> set[str]:
    """Every module and `module.name` a file imports (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            mod = "." * node.level + node.module
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_cli_character_commands_go_through_the_api():
    imports = _imports(REPO / "engine" / "cli" / "character.py")
    banned = [m for m in imports if m.startswith("engine.characters") or "get_analyzer" in m or "registry" in m]
    assert not banned, banned
    assert "engine.api.Engine" in imports
    # negative control: the checker sees what the CLI's neighbours import
    assert any(m.startswith("engine.characters") for m in _imports(REPO / "engine" / "cli" / "demo.py"))


def test_add_references_extends_every_encoder_of_the_character(tiny_settings, faces_dir, tmp_path):
    """A character embedded with two encoders (dlib + the tiny buffalo_l twin) gets the new photo in both: the
    twin's vectors equal what a full `reembed` of the new version computes from the crops."""
    from engine.characters import reembed

    arc = "tiny-arcface-buffalo_l-w600k_r50"
    eng = Engine(tiny_settings.model_copy(update={"home": tmp_path / "home", "archive_after_days": None}))
    eng.characters.create("duo", [faces_dir / "obama.jpg"])
    eng.characters.reembed("duo", arc)
    v3 = eng.characters.add_references("duo", [faces_dir / "obama2.jpg"])
    assert v3.version == 3 and sorted(v3.embeddings) == sorted([DLIB, arc])
    assert all(len(e.per_reference) == 2 for e in v3.embeddings.values())
    again = reembed(v3, eng.analyzer(arc)).embeddings[arc]
    assert np.allclose(v3.embeddings[arc].vector, again.vector, atol=1e-5)
    assert np.allclose(v3.embeddings[arc].per_reference, again.per_reference, atol=1e-5)
    assert not np.allclose(v3.embeddings[arc].vector, eng.characters.get("duo", 2).embeddings[arc].vector)
    with pytest.raises(InputError, match="first analyzer"):  # the checking encoder must be one it has
        eng.characters.add_references("duo", [faces_dir / "32bit.png"], encoder="tiny-arcface-antelopev2-glintr100")
