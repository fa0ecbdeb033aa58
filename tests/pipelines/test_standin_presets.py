"""The Stand-In presets: they say whether trained weights exist, name them per expert, and their tiny twins mirror
them. Wrong combinations are one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine._core.errors import ConfigError
from engine._core.settings import repo_root
from engine.models.manifest import load_manifest
from engine.presets import check_components, load_preset

PRESETS = repo_root() / "configs" / "presets"
STANDIN = ["video-wan21-t2v-14b-standin", "video-wan22-t2v-a14b-standin", "video-wan21-vace-14b-standin"]


@pytest.mark.parametrize("name", STANDIN)
def test_standin_presets_and_their_twins_mirror_each_other(name):
    manifest = load_manifest(repo_root() / "weights_manifest.json")
    real, tiny = load_preset(name, PRESETS), load_preset(f"tiny-{name}", PRESETS)
    for p in (real, tiny):
        check_components(p, manifest)
        assert p.reference is not None and p.reference.trained and p.reference.strength == 1.0
    assert (tiny.task, tiny.pipeline, tiny.boundary_ratio) == (real.task, real.pipeline, real.boundary_ratio)
    assert set(tiny.components.ids()) == set(real.components.ids())
    for slot, cid in tiny.components.ids().items():
        twin = manifest.get(cid)
        assert twin.is_generated and twin.source.twin_of == getattr(real.components, slot), (name, slot)
        assert manifest.get(twin.source.twin_of).role == twin.role
    for slot in ("reference", "reference_2"):
        cid = getattr(real.components, slot)
        if cid is not None:
            assert manifest.get(cid).family == "stand-in" and manifest.get(cid).source.type == "hub"


def test_wan22_names_one_checkpoint_per_expert():
    p = load_preset("video-wan22-t2v-a14b-standin", PRESETS)
    assert p.components.reference == "standin-wan22-t2v-a14b-high"
    assert p.components.reference_2 == "standin-wan22-t2v-a14b-low"
    assert p.boundary_ratio == 0.875 and p.guidance_2 == 5.0
    assert load_preset("video-wan21-vace-14b-standin", PRESETS).components.reference == "standin-wan21-t2v-14b"


def _write(tmp_path: Path, base: str, drop_component: str | None = None, **changes) -> Path:
    """`base` with top-level keys replaced (None removes one; a dict updates a mapping)."""
    data = yaml.safe_load((PRESETS / f"{base}.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        elif isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    if drop_component:
        del data["components"][drop_component]
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


@pytest.mark.parametrize(
    ("base", "changes", "expected"),
    [
        ("tiny-video-wan21-t2v-14b-standin", {"pipeline": "wan-i2v"}, "exist only for wan-t2v, wan-vace"),
        ("tiny-video-wan21-t2v-14b-standin", {"reference": None}, "add `reference: {trained: true}`"),
        ("tiny-video-wan21-t2v-14b-standin", {"reference": {"trained": False}}, "add `reference: {trained: true}`"),
        ("tiny-video-wan22-t2v-a14b-standin", {"drop_component": "reference_2"}, "need components.reference_2"),
        ("tiny-video-wan21-t2v-14b-standin", {"guidance_2": 3.0}, "set boundary_ratio too"),
        ("tiny-video-wan22-ti2v-5b", {"boundary_ratio": 0.9}, "two-expert pipeline"),
        ("tiny-video-wan21-t2v-14b-standin", {"reference": {"start": 0.7, "end": 0.3}}, "window start"),
        ("tiny-video-wan21-t2v-14b-standin", {"reference": {"strength": 1.5}}, "reference.strength"),
        ("tiny-video-wan21-t2v-14b-standin", {"reference": {"method": "lynx"}}, "reference.method"),
    ],
)
def test_wrong_reference_settings_are_one_line_errors(tmp_path, base, changes, expected):
    path = _write(tmp_path, base, **changes)
    with pytest.raises(ConfigError) as e:
        load_preset(path, PRESETS)
    msg = str(e.value)
    assert expected in msg and "\n" not in msg and str(path) in msg


def test_a_reference_slot_must_name_a_standin_checkpoint(tmp_path):
    manifest = load_manifest(repo_root() / "weights_manifest.json")
    path = _write(tmp_path, "tiny-video-wan21-t2v-14b-standin", components={"reference": "tiny-wan21-t2v-14b"})
    with pytest.raises(ConfigError, match="components.reference.*not a Stand-In checkpoint"):
        check_components(load_preset(path, PRESETS), manifest)
