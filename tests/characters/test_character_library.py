"""The SQLite library: versions, rename, delete, variants, archive policy, export/import all-or-nothing."""

from __future__ import annotations

import sqlite3

import pytest
from characters_helpers import make_character

from engine._core.errors import CharacterFileError, CharacterNotFound, ConfigError, InputError
from engine.characters import CharacterLibrary, make_variant, read_flx, update_profile
from engine.characters.library import SCHEMA_VERSION


@pytest.fixture()
def lib(tmp_path):
    with CharacterLibrary(tmp_path / "home" / "library.sqlite") as library:
        yield library


def test_schema_is_versioned_and_wal(lib):
    db = sqlite3.connect(lib.path)
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_is_refused(tmp_path):
    p = tmp_path / "lib.sqlite"
    CharacterLibrary(p).close()
    db = sqlite3.connect(p)
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="upgrade FLX Engine"):
        CharacterLibrary(p)


def test_not_a_database_is_a_config_error(tmp_path):
    p = tmp_path / "lib.sqlite"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="cannot be opened"):
        CharacterLibrary(p)


def test_add_get_versions_log_rename(lib):
    ch = lib.add(make_character("ava"))
    assert lib.get("AVA").id == ch.id  # names are case-insensitive
    assert lib.get(ch.id).name == "ava"
    assert lib.get(ch.id[:8]).name == "ava"  # id prefix as `list` shows it
    v2 = lib.add(update_profile(lib.get("ava"), {"hair_colour": "black"}, now="2025-02-01T00:00:00Z"))
    lib.rename("ava", "Ava Stone", now="2025-03-01T00:00:00Z")

    log = lib.log("Ava Stone")
    assert [e.version for e in log] == [1, 2, 3]
    assert log[1].change == "profile: hair_colour" and log[2].change.startswith("renamed from 'ava'")
    assert lib.get("Ava Stone", 1).profile.hair_colour == "auburn"  # old versions stay readable
    assert lib.get("Ava Stone", 2).profile.hair_colour == "black" and v2.version == 2
    assert lib.get("Ava Stone", 1).name == "ava"
    with pytest.raises(CharacterNotFound, match="flx character list"):
        lib.get("ava")
    with pytest.raises(CharacterNotFound, match="no version 9"):
        lib.get("Ava Stone", 9)
    with pytest.raises(InputError, match="version 3"):
        lib.add(make_character("x").model_copy(update={"id": ch.id, "version": 2}))


def test_names_unique_among_active(lib):
    lib.add(make_character("ava"))
    with pytest.raises(InputError, match="already exists"):
        lib.add(make_character("Ava"))
    lib.add(make_character("bea"))
    with pytest.raises(InputError, match="already exists"):
        lib.rename("bea", "ava")
    assert [s.name for s in lib.list()] == ["ava", "bea"]


def test_list_search_and_tag(lib):
    lib.add(make_character("ava", tags=("hero", "noir")))
    lib.add(make_character("bea", tags=("villain",)))
    lib.add(make_character("avalon", tags=()))
    assert [s.name for s in lib.list(search="AVA")] == ["ava", "avalon"]
    assert [s.name for s in lib.list(tag="Noir")] == ["ava"]
    assert [s.name for s in lib.list(search="a", tag="villain")] == ["bea"]


def test_delete(lib):
    lib.add(make_character("ava"))
    lib.add(make_character("bea"))
    lib.delete("ava")
    assert [s.name for s in lib.list()] == ["bea"]
    db = sqlite3.connect(lib.path)
    assert db.execute("SELECT count(*) FROM versions").fetchone() == (1,)  # versions went with it
    with pytest.raises(CharacterNotFound):
        lib.delete("ava")


def test_variant_shares_identity_and_overrides_look(lib):
    base = lib.add(make_character("ava"))
    var = lib.add(make_variant(lib.get("ava"), "ava-winter", wardrobe="red parka", notes="snow scenes"))
    got = lib.get("ava-winter")
    assert got.parent.character_id == base.id and got.parent.version == 1 and got.variant == "ava-winter"
    assert got.id != base.id and got.version == 1
    assert got.embeddings["dlib-resnet-v1"].vector == base.embeddings["dlib-resnet-v1"].vector
    assert got.profile.wardrobe_baseline == "red parka" and got.profile.notes == "snow scenes"
    assert got.profile.hair_colour == "auburn"
    assert lib.get("ava").profile.wardrobe_baseline is None
    assert lib.summary("ava-winter").parent_id == base.id and var.change.startswith("variant of 'ava'")


def test_archive_inactive_with_fake_clock(lib, tmp_path):
    lib.add(make_character("old"))  # created 2025-01-01 (fixed in the record)
    lib.add(make_character("used"))
    lib.add(
        make_character("fresh").model_copy(
            update={"created": "2025-05-01T00:00:00Z", "updated": "2025-05-01T00:00:00Z"}
        )
    )
    lib.touch_last_used("used", now="2025-04-20T00:00:00Z")
    archive = tmp_path / "archive"

    written = lib.archive_inactive(90, archive, now="2025-06-01T00:00:00Z")  # cutoff 2025-03-03

    assert [p.name.split("-")[0] for p in written] == ["old"]
    assert read_flx(written[0]).character.name == "old"
    assert [s.name for s in lib.list()] == ["fresh", "used"]
    assert [s.name for s in lib.list(include_archived=True) if s.archived] == ["old"]
    with pytest.raises(CharacterNotFound, match="archived"):
        lib.get("old")
    # the name is free again; importing the archive restores the character
    lib.import_file(written[0])
    assert lib.get("old").version == 1 and not lib.summary("old").archived
    assert lib.archive_inactive(90, archive, now="2025-03-31T00:00:00Z") == []  # nothing older than 2024-12-31
    with pytest.raises(InputError):
        lib.archive_inactive(0, archive)


def test_export_all_import_dir_round_trip(lib, tmp_path):
    lib.add(make_character("ava"))
    lib.rename("ava", "ava2", now="2025-02-02T00:00:00Z")
    lib.add(make_character("bea", seed=3))
    out = tmp_path / "out"
    paths = lib.export_all(out)
    assert sorted(p.name for p in paths) == ["ava2.flx", "bea.flx"]

    with CharacterLibrary(tmp_path / "other.sqlite") as other:
        res = other.import_dir(out)
        assert sorted(r.status for r in res) == ["added", "added"]
        assert [s.name for s in other.list()] == ["ava2", "bea"]
        other.export("ava2", tmp_path / "again.flx")
        assert (tmp_path / "again.flx").read_bytes() == (out / "ava2.flx").read_bytes()
        assert other.import_dir(out)[0].status == "unchanged"  # idempotent

    # the library can also receive an older version it lacks (history fill) and newer ones
    lib.export("ava2", tmp_path / "v1.flx", version=1)
    assert lib.import_file(tmp_path / "v1.flx").status == "unchanged"


def test_failed_import_dir_is_all_or_nothing(lib, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with CharacterLibrary(tmp_path / "a.sqlite") as a:
        a.add(make_character("ava"))
        a.add(make_character("bea"))
        a.export_all(src)
    (src / "zzz.flx").write_bytes((src / "bea.flx").read_bytes()[:-10])
    with pytest.raises(CharacterFileError, match="zzz.flx"):
        lib.import_dir(src)
    assert lib.list() == []


def test_import_conflicts_are_refused_atomically(lib, tmp_path):
    lib.add(make_character("ava"))
    other = make_character("ava", seed=9)  # a different character with the same name
    from engine.characters import write_flx

    write_flx(other, tmp_path / "clash.flx")
    with pytest.raises(InputError, match="already exists"):
        lib.import_file(tmp_path / "clash.flx")
    mine = lib.get("ava")
    tampered = mine.model_copy(deep=True)
    tampered.profile.notes = "same version, different content"
    write_flx(tampered, tmp_path / "conflict.flx")
    with pytest.raises(CharacterFileError, match="differs"):
        lib.import_file(tmp_path / "conflict.flx")
    assert len(lib.list()) == 1 and lib.get("ava").profile.notes is None


def test_inactivity_policy_from_settings(tmp_path):
    """Off by default; with FLX_ARCHIVE_AFTER_DAYS set, opening the library archives stale characters."""
    from engine._core.settings import EngineSettings
    from engine.characters import open_library

    settings = EngineSettings(home=tmp_path / "home")
    with open_library(settings) as lib:
        lib.add(make_character("stale", seed=1))
        lib.add(make_character("fresh", seed=2))
        lib.touch_last_used("stale", now="2020-01-01T00:00:00Z")
        lib.touch_last_used("fresh")  # used now
    with open_library(settings) as lib:  # policy off: nothing moves
        assert sorted(s.name for s in lib.list()) == ["fresh", "stale"]
    on = EngineSettings(home=tmp_path / "home", archive_after_days=30)
    with open_library(on) as lib:
        assert [s.name for s in lib.list()] == ["fresh"]
    archived = list((tmp_path / "home" / "archive").glob("*.flx"))
    assert len(archived) == 1 and read_flx(archived[0]).character.name == "stale"
