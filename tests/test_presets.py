"""Preset files validate, name real manifest components, and bad files fail with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from engine._core.errors import ConfigError
from engine._core.settings import repo_root
from engine.models.manifest import load_manifest
from engine.presets import StillPreset, VideoPreset, check_components, list_presets, load_preset

PRESETS = repo_root() / "configs" / "presets"
REQUIRED = [
    "stills-faceid-sdxl",
    "stills-instantid-sdxl",
    "video-wan21-i2v-480p",
    "video-wan21-i2v-720p",
    "video-wan22-ti2v-5b",
    "video-wan21-t2v-1.3b",
]


def test_required_presets_and_tiny_twins_exist():
    names = set(list_presets(PRESETS))
    for name in REQUIRED:
        assert name in names and f"tiny-{name}" in names


@pytest.mark.parametrize("name", list_presets(PRESETS))
def test_every_preset_validates_and_uses_manifest_ids(name):
    preset = load_preset(name, PRESETS)
    assert preset.name == name
    check_components(preset, load_manifest(repo_root() / "weights_manifest.json"))
    if isinstance(preset, VideoPreset):
        assert (preset.num_frames - 1) % 4 == 0 and preset.fps == 24
    else:
        assert isinstance(preset, StillPreset)


def test_tiny_twins_mirror_their_real_preset():
    manifest = load_manifest(repo_root() / "weights_manifest.json")
    for name in REQUIRED:
        real, tiny = load_preset(name, PRESETS), load_preset(f"tiny-{name}", PRESETS)
        assert (tiny.task, tiny.pipeline) == (real.task, real.pipeline)
        assert set(tiny.components.ids()) == set(real.components.ids())
        for slot, cid in tiny.components.ids().items():
            # The twin mirrors a real component of the same family and layout (one tiny Wan 2.1 I2V serves
            # both 480p and 720p: same architecture).
            twin, real_entry = (
                manifest.get(manifest.get(cid).source.twin_of),
                manifest.get(getattr(real.components, slot)),
            )
            assert (twin.family, twin.layout) == (real_entry.family, real_entry.layout), (name, slot)


def test_unknown_preset_lists_available_names():
    with pytest.raises(ConfigError) as e:
        load_preset("stills-nope", PRESETS)
    assert "stills-faceid-sdxl" in str(e.value) and "\n" not in str(e.value)


def _write(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((PRESETS / "tiny-video-wan21-i2v-480p.yaml").read_text())
    data.update(changes)
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"pipeline": "wan-xl"}, ["key 'pipeline'", "'wan-i2v'", "'wan-t2v'"]),
        ({"num_frames": 10}, ["key '<root>'", "4k+1"]),
        ({"steps": 500}, ["key 'steps'", "200", "500"]),
        ({"width": 70}, ["width 70", "multiple of 16"]),
        ({"task": "gif"}, ["key 'task'", "'still' or 'video'"]),
        ({"colour": "red"}, ["key 'colour'", "Extra inputs"]),
    ],
)
def test_invalid_file_names_file_key_and_allowed_values(tmp_path, changes, expected):
    path = _write(tmp_path, **changes)
    with pytest.raises(ConfigError) as e:
        load_preset(path, PRESETS)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    for part in expected:
        assert part in msg


def test_missing_slot_for_pipeline_kind(tmp_path):
    data = yaml.safe_load((PRESETS / "tiny-stills-faceid-sdxl.yaml").read_text())
    del data["components"]["image_encoder"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="needs components: image_encoder"):
        load_preset(path, PRESETS)


def test_unknown_component_id_is_reported(tmp_path):
    preset = load_preset(_write(tmp_path, components={"base": "wan-99"}), PRESETS)
    with pytest.raises(ConfigError, match="components.base.*wan-99"):
        check_components(preset, load_manifest(repo_root() / "weights_manifest.json"))


def test_presets_are_frozen():
    preset = load_preset("tiny-stills-sdxl", PRESETS)
    with pytest.raises(ValidationError, match="frozen"):
        preset.steps = 3  # type: ignore[misc]
