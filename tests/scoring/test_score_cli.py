"""`flx score` through typer's CliRunner, against reference photos (no character library needed)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from engine._core.errors import InputError
from engine.cli.main import app
from engine.scoring import ScoreReport
from engine.scoring.demo import build_demo_clip


def test_score_cli_with_reference_photos(tmp_path, faces_dir, isolated_settings):
    clip, _truth = build_demo_clip(faces_dir, tmp_path / "demo.mp4", seconds=2.0, size=(480, 270))
    out = tmp_path / "out"
    args = [
        "score", str(clip), "--reference-photo", str(faces_dir / "obama.jpg"),
        "--reference-photo", str(faces_dir / "obama2.jpg"),
        "--json", str(out / "r.json"), "--plot", str(out / "p.png"), "--sheet", str(out / "s.png"),
    ]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "identity swap" in res.output and "demo.mp4" in res.output
    report = ScoreReport.model_validate_json((out / "r.json").read_text())
    assert report.media[0].summary.swaps and report.reference.name == "obama+obama2"
    assert json.loads((out / "r.json").read_text())["encoder"]["threshold"] == report.encoder.threshold
    assert (out / "p.png").stat().st_size > 1000 and (out / "s.png").stat().st_size > 1000

    gate = CliRunner().invoke(app, args[:5] + ["--min-score", "99"])
    assert gate.exit_code == 1


def test_score_cli_bad_input(tmp_path, faces_dir, isolated_settings):
    bad = tmp_path / "empty.mp4"
    bad.write_bytes(b"")
    res = CliRunner().invoke(app, ["score", str(bad), "--reference-photo", str(faces_dir / "obama.jpg")])
    assert isinstance(res.exception, InputError) and "empty.mp4" in str(res.exception)
    res = CliRunner().invoke(app, ["score", str(bad)])
    assert isinstance(res.exception, InputError) and "--reference-photo" in str(res.exception)
