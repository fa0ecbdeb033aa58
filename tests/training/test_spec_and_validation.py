"""Training settings are checked as one line naming the flag; the result is the best-likeness checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from engine._core.errors import InputError
from engine.training import TrainSpec, Validation, select_best, spec_from_values
from engine.training.validation import likeness


def test_spec_bounds_and_defaults_are_one_line_errors(tmp_path):
    s = TrainSpec()
    assert s.lora_alpha == 16.0 and s.trigger == "ohwx" and s.preset == "stills-sdxl" and s.source == "pack"
    assert TrainSpec(rank=4, alpha=8).lora_alpha == 8.0
    with pytest.raises(InputError, match=r"^--rank must be a whole number from 1 to 256 \(got 0\)$"):
        spec_from_values({"rank": "--rank"}, rank=0)
    with pytest.raises(InputError, match="--lr must be a number"):
        spec_from_values({"lr": "--lr"}, lr=float("nan"))
    with pytest.raises(InputError, match="multiple of 8"):
        spec_from_values(resolution=100)
    with pytest.raises(InputError, match="prior_dir"):
        spec_from_values(prior_weight=0.5)
    with pytest.raises(InputError, match="Extra inputs"):
        spec_from_values(ranks=4)
    with pytest.raises(InputError, match="--validation-prompt"):
        spec_from_values({"validation_prompts": "--validation-prompt"}, validation_prompts=["x"] * 9)
    assert spec_from_values(rank=None, steps=10).rank == 16  # None = default
    assert "steps" not in s.resume_key() and s.prompts()[0].startswith("portrait photo of ohwx person")


def test_best_likeness_wins_scored_by_the_real_scorer_on_real_photos(faces_dir, ava, analyzer):
    from engine.characters.service import identity_reference
    from engine.identity.images import load_image

    ref = identity_reference(ava, analyzer.info)
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    renders = {  # step -> what the validation "rendered": other people, the character, nobody
        10: [load_image(faces_dir / "group_t1.jpg")],
        20: [load_image(faces_dir / "32bit.png"), noise],
        30: [noise],
        40: [load_image(faces_dir / "biden.jpg")],
    }
    losses = {10: 0.30, 20: 0.50, 30: 0.01, 40: 0.20}  # the lowest loss is not the best likeness
    vals = []
    for step, images in renders.items():
        score, per = likeness(images, ref, analyzer)
        vals.append(Validation(step, losses[step], score, per))
    by_step = {v.step: v for v in vals}
    assert by_step[30].likeness is None  # no face: not measured (not 0)
    assert by_step[20].likeness > 40 and by_step[20].scores[1] == 0.0  # the faceless render counts as 0
    assert by_step[10].likeness < by_step[20].likeness and by_step[40].likeness < by_step[20].likeness
    assert select_best(vals).step == 20
    tie = [Validation(5, 0.4, 60.0), Validation(6, 0.3, 60.0), Validation(7, 0.3, 60.0)]
    assert select_best(tie).step == 7  # equal likeness: lower loss, then the later step
    assert select_best([Validation(1, 0.1, None)]) is None and select_best([]) is None  # -> the last step


def test_chart_is_a_png(tmp_path):
    from engine.training.chart import write_chart

    out = write_chart([(i, 1.0 / i) for i in range(1, 50)], [Validation(25, 0.1, 70.0), Validation(49, 0.05, None)],
                      tmp_path / "c.png", best_step=25)  # fmt: skip
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
