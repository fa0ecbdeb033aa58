"""The prompt composer (engine/prompts.py, configs/prompts.yaml) and `flx prompt`: what reaches the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "characters"))
from characters_helpers import make_character  # noqa: E402

from engine._core.errors import CharacterNotFound, ConfigError, InputError  # noqa: E402
from engine._core.settings import EngineSettings  # noqa: E402
from engine.characters import CharacterLibrary, CharacterProfile, write_flx  # noqa: E402
from engine.prompts import (  # noqa: E402
    LIST_FIELDS,
    PROFILE_FIELDS,
    compose_prompt,
    default_prompts_path,
    load_prompt_templates,
    negative_term,
)

SDXL_BASE = load_prompt_templates().families["sdxl"].negative.base


def char(key: str = "ava", seed: int = 0, **profile):
    """A real character record with exactly the profile given (make_character's default profile replaced)."""
    ch = make_character(key, seed=seed)
    ch.profile = CharacterProfile.model_validate(profile)
    return ch


AVA = dict(
    age_range="28-32",
    hair_colour="auburn",
    hair_texture="wavy",
    hair_style="shoulder-length",
    eye_colour="green",
    anchor_details=[{"description": "small mole above the lip", "side": "left"}],
    wardrobe_baseline="green wool coat",
    forbidden_variations=["no glasses", "short hair"],
)
BOB = dict(
    age_range="40-45",
    hair_colour="black",
    permanent_accessories=["round glasses"],
    wardrobe_baseline="grey suit",
    forbidden_variations=["beard", "No Short Hair"],
)


# ---------------------------------------------------------------------------------------------- identity


def test_identity_clause_holds_each_visual_profile_field_in_template_order():
    ch = char(
        age_range="28-32",
        ethnicity="Irish",
        skin_tone="fair freckled",
        face_shape="heart-shaped",
        eye_shape="almond",
        eye_colour="green",
        hair_colour="auburn",
        hair_texture="wavy",
        hair_style="shoulder-length",
        makeup="light natural",
        wardrobe_baseline="green wool coat",
        permanent_accessories=["silver ring", "gold hoop earrings"],
        anchor_details=[{"description": "scar through the eyebrow", "side": "none"}],
        energy="calm, warm",
        expression_set=["broad smile"],
        voice_archetype="husky alto",
        notes="private note",
        tags=["hero"],
        name="Ava Byrne",
    )
    r = compose_prompt("reading in a cafe", [ch])
    expected = (
        "reading in a cafe, aged 28-32, Irish, fair freckled skin, auburn hair, wavy shoulder-length hair, "
        "almond green eyes, heart-shaped face, scar through the eyebrow, with silver ring, gold hoop earrings, "
        "wearing green wool coat, light natural makeup"
    )
    assert r.prompt == expected
    for unused in ("calm", "smile", "husky", "private", "hero", "Byrne", "ava"):  # mood, voice, notes, name
        assert unused.lower() not in r.prompt.lower()
    identity = [c for c in r.clauses if c.kind == "identity"]
    assert len(identity) == 1 and identity[0].character == 1 and r.prompt.endswith(identity[0].text)


@pytest.mark.parametrize(
    "field,value,phrase",
    [
        ("age_range", "45-55", "aged 45-55"),
        ("ethnicity", "Nigerian", "Nigerian"),
        ("skin_tone", "deep brown", "deep brown skin"),
        ("face_shape", "oval", "oval face"),
        ("eye_shape", "hooded", "hooded eyes"),
        ("eye_colour", "grey", "grey eyes"),
        ("hair_colour", "silver", "silver hair"),
        ("hair_texture", "coily", "coily hair"),
        ("hair_style", "buzz cut", "buzz cut hair"),
        ("makeup", "bold red lip", "bold red lip makeup"),
        ("wardrobe_baseline", "denim jacket", "wearing denim jacket"),
        ("permanent_accessories", ["nose ring"], "with nose ring"),
    ],
)
def test_each_field_alone_gives_its_phrase(field, value, phrase):
    r = compose_prompt("portrait", [char(**{field: value})])
    assert r.prompt == f"portrait, {phrase}"


def test_every_placeholder_is_a_profile_field():
    fields = set(CharacterProfile.model_fields)
    assert PROFILE_FIELDS | LIST_FIELDS <= fields
    assert all(CharacterProfile.model_fields[f].annotation is not list for f in PROFILE_FIELDS)


@pytest.mark.parametrize(
    "side,phrase",
    [
        ("left", "mole on the cheek on the subject's left side"),
        ("right", "mole on the cheek on the subject's right side"),
        ("centre", "mole on the cheek in the centre"),
        ("center", "mole on the cheek in the centre"),
        ("none", "mole on the cheek"),
    ],
)
def test_anchor_details_say_the_subjects_own_side_without_a_pronoun(side, phrase):
    r = compose_prompt("portrait", [char(anchor_details=[{"description": "mole on the cheek", "side": side}])])
    assert r.prompt == f"portrait, {phrase}"
    for word in (" her ", " his ", "viewer"):
        assert word not in r.prompt


def test_several_anchor_details_keep_their_order_and_sides():
    ch = char(anchor_details=[{"description": "scar", "side": "right"}, {"description": "freckle", "side": "left"}])
    assert (
        compose_prompt("x", [ch]).prompt == "x, scar on the subject's right side, freckle on the subject's left side"
    )


def test_empty_profile_gives_just_the_scene():
    r = compose_prompt("  a quiet\n beach   at dawn ", [char()])
    assert r.prompt == "a quiet beach at dawn"
    assert r.negative_prompt == SDXL_BASE
    assert [c.kind for c in r.clauses] == ["scene", "negative_base"]
    assert r.bindings[0].region == "whole image" and r.notes == ()


# ---------------------------------------------------------------------------------------------- wardrobe


@pytest.mark.parametrize("scene", ["ava in a red dress", "WEARING ripped jeans", "two summer dresses", "in a t-shirt"])
def test_scene_naming_clothing_drops_the_wardrobe_baseline(scene):
    r = compose_prompt(scene, [char(**AVA), char("bob", 1, **BOB)])
    assert "green wool coat" not in r.prompt and "grey suit" not in r.prompt
    assert "round glasses" in r.prompt  # permanent accessories stay
    assert sum("wardrobe baseline" in n for n in r.notes) == 2


@pytest.mark.parametrize("scene", ["walking in the rain", "an address on the door", "suitable light"])
def test_scene_without_clothing_keeps_the_wardrobe_baseline(scene):
    r = compose_prompt(scene, [char(**AVA)])
    assert "wearing green wool coat" in r.prompt
    assert not any("wardrobe" in n for n in r.notes)


# ---------------------------------------------------------------------------------------------- negative


@pytest.mark.parametrize(
    "variation,term",
    [("no glasses", "glasses"), ("Without makeup", "makeup"), ("beard", "beard"), ("never smiling.", "smiling"),
     ("no", ""), ("not no tattoos", "tattoos"), ("nothing shiny", "nothing shiny")],
)  # fmt: skip
def test_negative_term_drops_a_leading_negation(variation, term):
    assert negative_term(variation, ["no", "not", "without", "never"]) == term


def test_forbidden_variations_become_negative_terms_once_in_stable_order():
    ava = char(forbidden_variations=["no glasses", "short hair", "blurry", "no glasses"])
    bob = char("bob", 1, forbidden_variations=["beard", "Glasses", "no short hair", "Tattoos"])
    r = compose_prompt("two friends", [ava, bob])
    assert r.negative_prompt == f"{SDXL_BASE}, glasses, short hair, beard, Tattoos"  # "blurry" is in the base
    assert [c.text for c in r.clauses if c.kind == "drift"] == ["glasses, short hair, beard, Tattoos"]
    assert "glasses" not in r.prompt


def test_a_drift_term_the_prompt_asks_for_is_left_out_with_a_note():
    r = compose_prompt("[char1] and [char2]", [char(**AVA), char("bob", 1, **BOB)])
    assert "with round glasses" in r.prompt
    # ava's "no glasses" would fight bob's glasses (text attention is global); "short hair" is not asked for
    assert r.negative_prompt == f"{SDXL_BASE}, short hair, beard"
    assert any("'glasses' (forbidden for ava)" in n for n in r.notes)
    r = compose_prompt("wearing sunglasses", [char(forbidden_variations=["glasses"])])
    assert r.negative_prompt == f"{SDXL_BASE}, glasses"  # whole words: "sunglasses" is not "glasses"


# ---------------------------------------------------------------------------------------------- binding


def test_placeholders_refer_to_the_characters_given_in_order():
    ava, bob = char(**AVA), char("bob", 1, **BOB)
    r = compose_prompt("[char2] hands a coffee to [Char1]", [ava, bob])
    assert r.prompt.startswith(
        "the person on the right hands a coffee to the person on the left, on the left, aged 28-32"
    )
    assert "; on the right, aged 40-45, black hair, with round glasses" in r.prompt
    b1, b2 = r.bindings
    assert (b1.index, b1.name, b1.character_id, b1.version, b1.region, b1.position) == (
        1, "ava", ava.id, ava.version, "left", 1,
    )  # fmt: skip
    assert (b2.index, b2.name, b2.region, b2.position) == (2, "bob", "right", 2)
    assert b1.mentioned == b2.mentioned == "placeholder"
    assert "[char" not in r.prompt


def test_names_bind_case_insensitively_as_whole_words():
    ava, bob = char(**AVA), char("bob", 1, name="Robert Hale", **BOB)
    r = compose_prompt("AVA waves at Robert Hale near Avalon", [ava, bob])
    assert r.prompt.startswith("the person on the left waves at the person on the right near Avalon,")
    assert [b.mentioned for b in r.bindings] == ["name", "name"]
    r = compose_prompt("bob alone", [ava, bob])
    assert [b.mentioned for b in r.bindings] == [None, "name"]
    assert [b.region for b in r.bindings] == ["left", "right"]  # regions follow the order given, not the mentions
    r = compose_prompt("ava reading", [ava])
    assert r.prompt.startswith("the person reading, aged 28-32")


def test_the_longest_name_wins_and_a_shared_name_must_be_a_placeholder():
    r = compose_prompt("ava rose and ava", [char("ava"), char("ava rose", 1)])
    assert r.prompt == "the person on the right and the person on the left"
    twins = [char("mia", hair_colour="red"), char("pia", 1, name="Mia", hair_colour="black")]
    with pytest.raises(InputError, match=r"characters 1, 2 are all called that: write \[char1\]"):
        compose_prompt("mia smiles", twins)
    assert "red hair" in compose_prompt("[char1] smiles", twins).prompt  # placeholders still work


@pytest.mark.parametrize(
    "scene,match",
    [
        ("[char3] waves", r"refers to \[char3\] but 2 character\(s\) were given"),
        ("[char5] waves", r"unknown placeholder '\[char5\]'"),
        ("[char0] waves", r"unknown placeholder '\[char0\]'"),
        ("[ char ] waves", r"unknown placeholder '\[ char \]'"),
    ],
)
def test_a_placeholder_for_no_given_character_is_refused(scene, match):
    with pytest.raises(InputError, match=match) as exc:
        compose_prompt(scene, [char(), char("bob", 1)])
    assert "\n" not in str(exc.value)


def test_a_fifth_character_is_refused():
    chars = [char(f"c{i}", i) for i in range(5)]
    with pytest.raises(InputError, match="5 characters given: one image holds at most 4") as exc:
        compose_prompt("a group", chars)
    assert "\n" not in str(exc.value)


LABELS = {1: ["whole image"], 2: ["left", "right"], 3: ["left", "centre", "right"],
          4: ["far left", "centre left", "centre right", "far right"]}  # fmt: skip
WHERE = {1: [""], 2: ["on the left, ", "on the right, "], 3: ["on the left, ", "in the centre, ", "on the right, "],
         4: ["on the far left, ", "left of centre, ", "right of centre, ", "on the far right, "]}  # fmt: skip


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_region_phrasing_says_who_is_where_left_to_right(n):
    colours = ["red", "black", "blond", "grey"]
    chars = [char(f"c{i}", i, hair_colour=colours[i]) for i in range(n)]
    r = compose_prompt("friends at a table", chars)
    assert [b.region for b in r.bindings] == LABELS[n]
    assert [b.position for b in r.bindings] == list(range(1, n + 1))
    subjects = "; ".join(f"{WHERE[n][i]}{colours[i]} hair" for i in range(n))
    assert r.prompt == f"friends at a table, {subjects}"


def test_region_labels_match_the_identity_layout():
    layout = pytest.importorskip("engine.identity.layout")
    for n in range(1, 5):
        regions = layout.auto_layout(n, 1024, 1024)
        r = compose_prompt("x", [char(f"c{i}", i) for i in range(n)])
        assert [b.region for b in r.bindings] == [reg.label(n) for reg in regions]


# ---------------------------------------------------------------------------------------------- families


def test_template_version_and_digest_are_recorded():
    r = compose_prompt("x", [char(**AVA)])
    assert r.template_version == "flx-default v1 (sdxl)" and r.family == "sdxl"
    assert compose_prompt("x", family="wan").template_version == "flx-default v1 (wan)"
    tpl = load_prompt_templates()
    assert r.template_sha256 == tpl.digest() and len(r.template_sha256) == 64
    changed = tpl.model_copy(update={"wardrobe_words": ("cape",)})
    assert changed.digest() != tpl.digest()
    meta = r.metadata()
    assert meta["prompt_template"] == r.template_version
    assert meta["characters"][0]["character_id"] == r.bindings[0].character_id


def test_wan_family_takes_the_motion_clause_and_sdxl_refuses_it():
    ava = char(**AVA)
    r = compose_prompt("ava walks on a beach", [ava], family="wan", motion="slow dolly forward")
    assert r.prompt.startswith("the person walks on a beach. The person: aged 28-32, auburn hair")
    assert r.prompt.endswith(". slow dolly forward")
    assert [c.text for c in r.clauses if c.kind == "motion"] == ["slow dolly forward"]
    assert r.negative_prompt.endswith("walking backwards, glasses, short hair")
    assert r.max_tokens == 512
    with pytest.raises(InputError, match="motion is for video families"):
        compose_prompt("x", [ava], motion="pan left")
    with pytest.raises(InputError, match="choose one of sdxl, wan"):
        compose_prompt("x", [ava], family="flux")


def test_long_prompts_get_a_token_note_and_scene_comes_first():
    r = compose_prompt("ava walks", [char(**AVA)])
    assert r.token_estimate < 75 and r.notes == ()
    r = compose_prompt("a very " * 40 + "long scene", [char(**AVA)])
    assert r.token_estimate > 75
    assert any("reads only the first 75" in n for n in r.notes)
    assert r.prompt.startswith("a very a very")


def test_scene_text_follows_the_text_rule():
    with pytest.raises(InputError, match="U\\+202E"):
        compose_prompt("evil\u202etext", [char()])
    with pytest.raises(InputError, match="scene is empty and no character"):
        compose_prompt("   ")
    assert compose_prompt("", [char(**AVA)]).prompt.startswith("aged 28-32")


# ---------------------------------------------------------------------------------------------- hostile templates


def _shipped() -> str:
    return default_prompts_path().read_text(encoding="utf-8")


BOMB = "a: &a ['x','x','x','x','x','x','x','x','x']\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)


@pytest.mark.parametrize(
    "text,match",
    [
        (BOMB, "expands to more than"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("version: [\n", "invalid YAML"),
        (_shipped().replace("version: 1", "version: one"), "key 'version': Input should be a valid integer"),
        (_shipped().replace("max_tokens: 75", "max_tokens: -3"), "key 'families.sdxl.max_tokens'"),
        (_shipped().replace('join: "; "', "join: [1]", 1), "key 'families.sdxl.subjects.join'"),
        (_shipped().replace("name: flx-default", "name: flx-default\ncolour: red"), "key 'colour': Extra inputs"),
        (_shipped().replace("    max_tokens: 75", "    max_tokens: 75\n    cfg: 7"), "key 'families.sdxl.cfg'"),
        (_shipped().replace('"{skin_tone} skin"', '"{skin} skin"'), r"unknown placeholder \{skin\}"),
        (_shipped().replace('"{skin_tone} skin"', '"{skin_tone.__class__} skin"'), "braces are only for"),
        (_shipped().replace('prompt: ["{scene}", "{subjects}"]', 'prompt: ["{subjects}"]'), r"must contain \{scene\}"),
        (_shipped().replace("    motion: null", '    motion: "{motion}"'), "exactly when `motion` is set"),
        (_shipped().replace("        4:\n", "        5:\n", 1), "families.sdxl.subjects.regions.5"),
        (_shipped().replace('base: "lowres', 'base: "\\u001b[2Jlowres', 1), "U\\+001B"),
    ],
)
def test_hostile_prompts_yaml_is_one_config_error_line(tmp_path, text, match):
    p = tmp_path / "prompts.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=match) as exc:
        load_prompt_templates(p)
    msg = str(exc.value)
    assert "\n" not in msg and str(p) in msg and "\x1b" not in msg


def test_missing_templates_file_and_shipped_families():
    with pytest.raises(ConfigError, match="prompt templates not found"):
        load_prompt_templates("/nonexistent/prompts.yaml")
    tpl = load_prompt_templates()
    assert {"sdxl", "wan"} <= set(tpl.families) and tpl.version >= 1
    assert tpl.families["wan"].motion is not None and tpl.families["sdxl"].motion is None


# ---------------------------------------------------------------------------------------------- CLI


def flx(*args, home):
    env = dict(os.environ, FLX_HOME=str(home), FLX_WEIGHTS_DIR=str(home / "weights"), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True, env=env, timeout=120
    )


def one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture()
def library(tmp_path):
    settings = EngineSettings(home=tmp_path)
    with CharacterLibrary(settings.library_file) as lib:
        ava = lib.add(char(**AVA))
        bob = lib.add(char("bob", 1, **BOB))
        odd = lib.add(char("x[/]y[bold]", 2, hair_colour="[red]teal"))
    return tmp_path, ava, bob, odd


def test_cli_prints_what_compose_returns(library):
    home, ava, bob, _ = library
    scene = "[char1] hands a coffee to bob"
    expected = compose_prompt(scene, [ava, bob])
    r = flx("prompt", "ava", "bob", scene, home=home)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"prompt ({expected.template_version}):\n  {expected.prompt}\n" in out
    assert f"negative prompt:\n  {expected.negative_prompt}\n" in out
    assert f"[char1] ava  id {ava.id}  v{ava.version}  region left  (scene: as [char1])" in out
    assert f"[char2] bob  id {bob.id}  v{bob.version}  region right  (scene: by name)" in out
    assert f"about {expected.token_estimate}+ text tokens" in out
    for note in expected.notes:
        assert note in out
    r = flx("prompt", "ava", "bob", scene, "--json", home=home)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == expected.model_dump(mode="json")


def test_cli_literal_form_flx_files_and_wan(library, tmp_path):
    home, ava, _, odd = library
    r = flx("prompt", "ava", "reading in a rainy cafe", home=home)
    assert r.returncode == 0, r.stderr
    assert compose_prompt("reading in a rainy cafe", [ava]).prompt in r.stdout
    path = tmp_path / "ava.flx"
    write_flx(ava, path)
    r = flx("prompt", str(path), "ava on a beach", "--model", "wan", "--motion", "slow pan", "--json", home=home)
    assert r.returncode == 0, r.stderr
    expected = compose_prompt("ava on a beach", [ava], family="wan", motion="slow pan")
    assert json.loads(r.stdout)["prompt"] == expected.prompt and expected.prompt.endswith("slow pan")
    r = flx("prompt", "x[/]y[bold]", "portrait", home=home)  # markup-like user text is printed literally
    assert r.returncode == 0 and "x[/]y[bold]" in r.stdout and "[red]teal hair" in r.stdout, r.stderr
    r = flx("prompt", "a quiet beach", home=home)  # no characters: the scene and the base negative
    assert r.returncode == 0 and "\n  a quiet beach\n" in r.stdout, r.stderr


def test_cli_user_errors_are_one_line(library):
    home = library[0]
    r = flx("prompt", "a", "b", "c", "d", "e", "a crowd", home=home)
    assert r.returncode == InputError.exit_code and "5 characters given" in one_line(r)
    r = flx("prompt", "nobody", "x", home=home)
    assert r.returncode == CharacterNotFound.exit_code and "no character named" in one_line(r)
    r = flx("prompt", "ava", "x", "--motion", "pan", home=home)
    assert r.returncode == InputError.exit_code and "motion is for video" in one_line(r)
    r = flx("prompt", "ava", "[char2] waves", home=home)
    assert r.returncode == InputError.exit_code and "[char2]" in one_line(r)
    bad = home / "bad.yaml"
    bad.write_text(BOMB)
    r = flx("prompt", "ava", "x", "--templates", str(bad), home=home)
    assert r.returncode == ConfigError.exit_code and "expands to more than" in one_line(r)
