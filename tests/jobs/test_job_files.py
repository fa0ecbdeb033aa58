"""Job files: every key checked by the schema of its kind, errors that name the file, line, key and allowed values,
and hostile documents refused by the one bounded reader."""

from __future__ import annotations

import json

import pytest

from engine._core.errors import ConfigError


def _parse(text: str, source: str = "jobs.yaml"):
    from engine.jobs.specs import parse_job

    return parse_job(source=source, text=text)


GOOD = """\
version: 1
name: season-1
characters:
  mara: Mara
defaults:
  still: {preset: tiny-stills-sdxl, steps: 4}
shots:
  - {id: cafe, kind: still, prompt: "in a cafe", characters: [mara]}
  - {id: walk, kind: sequence, character: mara, preset: tiny-video-wan21-vace-14b-standin,
     shots: [{prompt: walks, seconds: 2}]}
  - {id: pack, kind: pack, character: mara, candidates: 2}
  - {id: lora, kind: train, character: mara, steps: 8, source: refs}
  - {id: qc, kind: score, character: mara, media: [renders/a.mp4]}
  - {id: clip, kind: video, character: mara, preset: tiny-video-wan21-i2v-480p, prompt: turns, start_image: a.png}
"""


def test_a_job_of_every_kind_validates_into_the_schemas_that_run_it(tmp_path):
    from engine.jobs.specs import kind_schema, load_job, shot_spec
    from engine.shots.sequence import SequenceSpec
    from engine.shots.still import StillShot
    from engine.training.spec import TrainSpec

    path = tmp_path / "jobs.yaml"
    path.write_text(GOOD)
    job = load_job(path)
    assert [s.kind for s in job.shots] == ["still", "sequence", "pack", "train", "score", "video"]
    still = shot_spec(job, job.shot("cafe"))
    assert isinstance(still, StillShot) and still.steps == 4 and still.characters == ["mara"]  # defaults applied
    assert isinstance(shot_spec(job, job.shot("walk")), SequenceSpec)
    assert isinstance(shot_spec(job, job.shot("lora")), TrainSpec)
    assert kind_schema("video").__name__ == "VideoShot"
    # relative paths are taken from the job file's folder
    qc = shot_spec(job, job.shot("qc"))
    assert qc.media == [str(tmp_path / "renders" / "a.mp4")]
    assert shot_spec(job, job.shot("clip")).start_image == str(tmp_path / "a.png")
    # JSON job files are the same schema
    as_json = tmp_path / "jobs.json"
    import yaml

    as_json.write_text(json.dumps(yaml.safe_load(GOOD)))
    assert load_job(as_json).model_dump() == job.model_dump()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("steps: 4}", "line 6: key 'defaults.still.steps': must be a whole number from 1 to 200 (got 500)"),
        ("kind: still", "line 8: key 'shots[0].kind': kind must be one of still, pack, video, sequence, train, score"),
        ("prompt:", "line 8: key 'shots[0].promt': unknown key (allowed: candidates, character_lora, compose"),
        ("characters: [mara]", "line 8: key 'shots[0].character': unknown character 'maria' (declare it under "),
        ("candidates: 2", "line 11: key 'shots[2].candidates': must be a whole number from 1 to 16 (got 0)"),
        ("id: walk", "line 9: shot id 'cafe' is used twice"),
        ("name: season-1", "line 2: key 'name': use 1-64 letters, digits, '.', '_' or '-', starting with a letter"),
    ],
)
def test_errors_name_the_file_line_key_and_allowed_values(change, expected):
    edits = {
        "steps: 4}": ("steps: 4}", "steps: 500}"),
        "kind: still": ("kind: still", "kind: stil"),
        "prompt:": ('prompt: "in a cafe"', 'promt: "in a cafe"'),
        "characters: [mara]": ("characters: [mara]", "characters: [maria]"),
        "candidates: 2": ("candidates: 2", "candidates: 0"),
        "id: walk": ("id: walk", "id: cafe"),
        "name: season-1": ("name: season-1", "name: ../../etc"),
    }
    old, new = edits[change]
    with pytest.raises(ConfigError) as err:
        _parse(GOOD.replace(old, new, 1))
    msg = str(err.value)
    assert msg.startswith("jobs.yaml "), msg
    assert expected in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "bad",
    [
        "shots: []\nname: x",  # no shots
        "name: x\nshots: [{id: ../up, kind: still, prompt: p, preset: q}]",  # a path as a shot id
        "name: x\nshots: [{id: a, kind: still, prompt: p, preset: q, output: /etc/passwd}]",
        "name: x\nshots: [{id: a, kind: still, prompt: p, preset: q, seed: -1}]",
        "name: x\nshots: [{id: a, kind: still, prompt: p, preset: q, steps: .nan}]",
        'name: x\nshots: [{id: a, kind: still, prompt: "\\u202egnp.exe", preset: q}]',  # bidi override
        "name: x\ncharacters: {m: M}\nshots: [{id: a, kind: pack, characters: [m, m]}]",
        "name: x\ncharacters: {m: M}\nshots: [{id: a, kind: still, prompt: p, preset: q, character: m, characters: [m]}]",
        "name: x\nshots: [{id: a, kind: score, media: [a.mp4]}]",  # score needs a character
        "- just\n- a list",
        "name: x\ndefaults: {still: {seed: 5}}\nshots: [{id: a, kind: still, prompt: p, preset: q}]",  # per shot
        "name: x\ncharacters: {m: M}\ndefaults: {still: {characters: [m]}}\nshots: [{id: a, kind: still, prompt: p, "
        "preset: q}]",
        "name: x\nshots: [{id: a, kind: still, prompt: p, preset: q, characters: [a, b, c, d, e]}]",
    ],
)
def test_hostile_or_wrong_documents_are_one_line_config_errors(bad):
    with pytest.raises(ConfigError) as err:
        _parse(bad)
    assert "\n" not in str(err.value) and str(err.value).startswith("jobs.yaml")


def test_a_billion_laughs_job_file_is_refused_before_anything_walks_it(tmp_path):
    lol = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    path = tmp_path / "lol.yaml"
    path.write_text(lol + "name: x\nshots: [{id: a, kind: still, prompt: p, preset: q}]\n")
    from engine.jobs.specs import load_job

    with pytest.raises(ConfigError, match="expands to more than"):
        load_job(path)
    big = tmp_path / "big.yaml"
    big.write_text("name: x\n# " + "x" * (1024 * 1024 + 10) + "\n")
    with pytest.raises(ConfigError, match="over the 1024 KiB limit"):
        load_job(big)


def test_score_media_globs_are_bounded(tmp_path):
    from engine._core.errors import InputError
    from engine.jobs import specs

    for i in range(5):
        (tmp_path / f"m{i}.mp4").write_bytes(b"")
    assert len(specs.media_files([str(tmp_path / "*.mp4")])) == 5
    old = specs.MAX_MEDIA
    specs.MAX_MEDIA = 3
    try:
        with pytest.raises(InputError, match="more than 3 media files"):
            specs.media_files([str(tmp_path / "*.mp4")])
    finally:
        specs.MAX_MEDIA = old
    with pytest.raises(InputError, match="no file matches"):
        specs.media_files([str(tmp_path / "none-*.mp4")])
