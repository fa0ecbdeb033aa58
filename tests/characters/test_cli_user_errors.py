"""User mistakes at the command line end in one line and a non-zero exit (regressions found in review)."""

from __future__ import annotations

import os
import subprocess
import sys

from characters_helpers import make_character

from engine._core.errors import ConfigError, InputError, OutputError, WeightsIntegrityError
from engine._core.settings import EngineSettings
from engine.characters import CharacterLibrary


def flx(*args, home, **env):
    e = dict(os.environ, FLX_HOME=str(home), FLX_WEIGHTS_DIR=str(home / "weights"), COLUMNS="200", **env)
    return subprocess.run(
        [sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True, env=e, timeout=120
    )


def one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    return lines[0]


def test_markup_like_text_is_printed_literally(tmp_path):
    settings = EngineSettings(home=tmp_path)
    with CharacterLibrary(settings.library_file) as lib:
        lib.add(make_character("x[/]y[bold]", seed=3))
    r = flx("character", "list", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "x[/]y[bold]" in r.stdout
    r = flx("character", "show", "x[/]y[bold]", home=tmp_path)
    assert r.returncode == 0 and "x[/]y[bold]" in r.stdout, r.stderr
    r = flx("weights", "import", str(tmp_path / "no[/]such"), home=tmp_path)
    assert r.returncode == InputError.exit_code and "no[/]such" in one_line(r)


def test_bad_settings_and_paths(tmp_path):
    r = flx("character", "list", home=tmp_path, FLX_ARCHIVE_AFTER_DAYS="0")
    assert r.returncode == ConfigError.exit_code and "FLX_ARCHIVE_AFTER_DAYS" in one_line(r)
    r = flx("weights", "verify", "sdxl-base-1.0", home=tmp_path)
    assert r.returncode == WeightsIntegrityError.exit_code and "sdxl-base-1.0 is missing" in one_line(r)
    settings = EngineSettings(home=tmp_path)
    with CharacterLibrary(settings.library_file) as lib:
        lib.add(make_character("ava", seed=4))
    (tmp_path / "outdir").mkdir()
    r = flx("character", "export", "ava", str(tmp_path / "outdir"), home=tmp_path)
    assert r.returncode == OutputError.exit_code and "is a folder" in one_line(r)
    assert list((tmp_path / "outdir").iterdir()) == []


def test_edit_profile_makes_a_new_version(tmp_path):
    settings = EngineSettings(home=tmp_path)
    with CharacterLibrary(settings.library_file) as lib:
        lib.add(make_character("mira", seed=5))
    r = flx("character", "edit", "mira", "--set", "hair_colour=silver", "--set", "tags=[hero, red]", home=tmp_path)
    assert r.returncode == 0, r.stderr
    with CharacterLibrary(settings.library_file) as lib:
        v2, v1 = lib.get("mira"), lib.get("mira", 1)
    assert v2.version == 2 and v2.profile.hair_colour == "silver" and v2.profile.tags == ["hero", "red"]
    assert v1.profile.hair_colour != "silver"  # the old version stays as it was
    assert v2.embeddings["dlib-resnet-v1"].vector == v1.embeddings["dlib-resnet-v1"].vector
    r = flx("character", "edit", "mira", "--set", "anchor_details=3", home=tmp_path)
    assert r.returncode == InputError.exit_code and "anchor_details" in one_line(r)
    r = flx("character", "edit", "mira", "--set", "nonsense", home=tmp_path)
    assert r.returncode == InputError.exit_code and "field=value" in one_line(r)
