"""A run exports its best-likeness checkpoint, not its last step, and records why."""

from __future__ import annotations

import json

import numpy as np
from training_helpers import spec

from engine.training import train_character_lora


def test_the_export_is_the_best_likeness_step(fresh_sdxl, ava, analyzer, faces_dir, tmp_path, monkeypatch):
    import engine.training.validation as validation
    from engine.identity.images import load_image

    # The random tiny model cannot draw a face, so its validation renders are swapped for real photos (the training,
    # the pipeline and the scorer stay real): step 1 "renders" the character, step 2 someone else, step 3 nobody.
    shown = {1: load_image(faces_dir / "32bit.png"), 2: load_image(faces_dir / "biden.jpg"),
             3: np.zeros((64, 64, 3), np.uint8)}  # fmt: skip
    calls = []

    def photos(pipe, prompts, **kw):
        calls.append(kw)
        return [shown[len(calls)] for _ in prompts]

    monkeypatch.setattr(validation, "render_validation", photos)
    loaded = fresh_sdxl()
    result = train_character_lora(loaded, spec(steps=3, validate_every=1, lr=1e-2), tmp_path / "run", character=ava,
                                  analyzer=analyzer)  # fmt: skip
    assert [v.step for v in result.validations] == [1, 2, 3] and result.validations[2].likeness is None
    assert result.info["best_step"] == 1 and result.info["best_likeness"] > 40
    assert calls[0]["steps"] == 2 and calls[0]["resolution"] == 64  # validation_steps, the training side

    calls.clear()
    one = train_character_lora(loaded, spec(steps=1, validate_every=1, lr=1e-2), tmp_path / "one", character=ava,
                               analyzer=analyzer)  # fmt: skip
    assert one.lora_bytes == result.lora_bytes  # the exported LoRA is the weights after step 1
    history = json.loads(result.paths["history"].read_text())
    assert history["info"]["best_step"] == 1 and [v["step"] for v in history["validations"]] == [1, 2, 3]
    assert result.paths["chart"].read_bytes()[:4] == b"\x89PNG"
