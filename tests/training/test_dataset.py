"""The training set: only images of the character, captions, flips that respect one-sided details, a fixed order."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from training_helpers import spec

from engine._core.errors import InputError
from engine.characters.schema import AnchorDetail, CharacterProfile
from engine.training.dataset import build_training_set, flip_allowed, plan_samples, render_crop, sample_order


def test_flips_are_off_for_a_one_sided_anchor_detail_and_on_otherwise(ava, analyzer):
    left = CharacterProfile(anchor_details=[AnchorDetail(description="small mole above the lip", side="left")])
    worded = CharacterProfile(anchor_details=[AnchorDetail(description="scar through the right eyebrow")])
    centred = CharacterProfile(anchor_details=[AnchorDetail(description="freckles across the nose", side="centre")])
    assert flip_allowed("auto", CharacterProfile())[0] and flip_allowed("auto", centred)[0]
    assert not flip_allowed("auto", left)[0] and "small mole" in flip_allowed("auto", left)[1]
    assert not flip_allowed("auto", worded)[0]  # side not set, but the words say which side
    assert flip_allowed("on", left)[0] and not flip_allowed("off", CharacterProfile())[0]

    sided = ava.model_copy(update={"profile": left})
    s = spec(augment_variants=2)
    off, on = build_training_set(sided, s, analyzer), build_training_set(ava, s, analyzer)
    assert not off.flip and on.flip
    no_flips, flips = plan_samples(off.images, 64, s, off.flip), plan_samples(on.images, 64, s, on.flip)
    assert not any(x.flip for x in no_flips) and len(no_flips) == 4
    assert sum(x.flip for x in flips) == 4 and len(flips) == 8
    x = flips[1]
    assert x.flip and torch.equal(render_crop(on.images[x.image], x.crop, 64, True),
                                  render_crop(on.images[x.image], x.crop, 64, False).flip(2))  # fmt: skip


def test_images_without_the_characters_face_are_skipped_and_too_few_refused(faces_dir, ava, analyzer, tmp_path):
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg"):
        shutil.copy(faces_dir / name, tmp_path / name)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(tmp_path / "n.png")
    (tmp_path / "obama2.txt").write_text("photo of ohwx person speaking at a podium\n")
    profiled = ava.model_copy(update={"profile": CharacterProfile(hair_colour="black", eye_colour="brown")})
    tset = build_training_set(profiled, spec(source=str(tmp_path)), analyzer)
    assert [im.name for im in tset.images] == ["obama.jpg", "obama2.jpg"]
    skipped = dict(tset.skipped)
    assert set(skipped) == {"biden.jpg", "n.png"} and skipped["n.png"] == "no face found"
    assert skipped["biden.jpg"] in ("no face found",) or skipped["biden.jpg"].startswith("not ava: distance")
    assert tset.images[1].caption == "photo of ohwx person speaking at a podium"  # the caption file, verbatim
    cap = tset.images[0].caption
    assert cap.startswith("photo of ohwx person, ") and "black hair" in cap and "brown eyes" in cap
    assert len(set(tset.sha256s)) == 2 and all(len(h) == 64 for h in tset.sha256s)
    with pytest.raises(InputError, match=r"only 2 of 4 training images show 'ava' \(3 needed\).*biden\.jpg"):
        build_training_set(ava, spec(source=str(tmp_path), min_images=3), analyzer)
    with pytest.raises(InputError, match="no pack images"):
        build_training_set(ava, spec(source="pack"), analyzer)


def test_data_order_is_a_seeded_function_of_the_position():
    a = sample_order(0, 30, 7, seed=3)
    assert a == sample_order(0, 30, 7, seed=3) and a[10:20] == sample_order(10, 10, 7, seed=3)  # resumable anywhere
    for e in range(4):
        assert sorted(a[7 * e : 7 * e + 7]) == list(range(7))  # each epoch sees every sample once
    assert a[:7] != a[7:14] and a != sample_order(0, 30, 7, seed=4)
