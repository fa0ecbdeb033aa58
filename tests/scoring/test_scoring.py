"""Consistency scoring on short real clips built from the test photos (dlib encoder, real models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scoring_clips import group_clip, no_face_clip, single_person_clip

from engine._core.errors import InputError
from engine.identity.types import IdentityReference
from engine.scoring import (
    ScoreReport,
    ScoringOptions,
    WorstFrames,
    opens2v_indices,
    reference_from_photos,
    score_frames,
    score_media,
    score_sequence,
    write_contact_sheet,
    write_plot,
)
from engine.scoring.demo import build_demo_clip, load_sprites, render_frames
from engine.scoring.schema import ScoreCurve


@pytest.fixture(scope="session")
def analyzer():
    from engine.scoring.reference import analyzer_for

    return analyzer_for()


@pytest.fixture(scope="session")
def reference(analyzer, faces_dir):
    return reference_from_photos([faces_dir / "obama.jpg", faces_dir / "obama2.jpg"], analyzer)


@pytest.fixture(scope="session")
def sprites(analyzer, faces_dir):
    return load_sprites(faces_dir, analyzer)


@pytest.fixture(scope="session")
def clips(tmp_path_factory, faces_dir, sprites, analyzer):
    d = tmp_path_factory.mktemp("clips")
    demo, truth = build_demo_clip(faces_dir, d / "demo.mp4", seconds=4.0, analyzer=analyzer)
    return {
        "demo": demo,
        "truth": truth,
        "a": single_person_clip(sprites["obama2.jpg"], d / "a.mp4", 36),
        "a2": single_person_clip(sprites["obama.jpg"], d / "a2.mp4", 36),
        "b": single_person_clip(sprites["biden.jpg"], d / "b.mp4", 36),
        "group": group_clip(faces_dir, sprites["obama.jpg"], d / "group.mp4", 16),
        "noface": no_face_clip(d / "noface.mp4", 24),
    }


@pytest.fixture(scope="session")
def demo_report(clips, reference, analyzer):
    worst = WorstFrames()
    return score_media([clips["demo"]], reference, analyzer, "full", collector=worst), worst


def test_score_curve_anchors():
    c = ScoreCurve()
    assert c.score(0.2, 0.6) == 100.0
    assert c.score(0.36, 0.6) == 100.0
    assert c.score(0.6, 0.6) == pytest.approx(50.0)
    assert c.score(0.75, 0.6) == 0.0
    xs = np.linspace(0, 1.2, 121)
    ys = [c.score(x, 0.6) for x in xs]
    assert all(a >= b for a, b in zip(ys, ys[1:]))  # monotone non-increasing


def test_spliced_person_found_with_time_range(demo_report, clips):
    report, _ = demo_report
    truth = clips["truth"]
    m = report.media[0]
    k = m.sampling.detect_every
    assert m.summary.frames_total == m.summary.frames_scored == len(m.frames) == 96
    assert len(m.summary.swaps) == 1
    swap = m.summary.swaps[0]
    assert abs(swap.start_frame - truth.start_frame) <= k
    assert abs(swap.end_frame - truth.end_frame) <= k
    assert swap.start_s == pytest.approx(truth.start_s, abs=k / truth.fps)
    assert swap.end_s == pytest.approx(truth.end_s, abs=k / truth.fps)
    # Outside the splice the character passes; inside it does not.
    inside = [f for f in m.frames if truth.start_frame <= f.index <= truth.end_frame]
    outside = [f for f in m.frames if f.index < truth.start_frame - k or f.index > truth.end_frame + k]
    assert all(f.passes for f in outside)
    assert not any(f.passes for f in inside[k:-k])
    # Sparse: far fewer embeddings than frames.
    assert m.summary.frames_embedded < len(m.frames) / 3
    assert report.encoder.encoder_id == analyzer_id(report)
    assert m.sha256 and len(m.sha256) == 64


def analyzer_id(report: ScoreReport) -> str:
    return report.reference.encoder_id


def test_same_person_high_other_person_low_and_seams(clips, reference, analyzer):
    report = score_sequence([clips["a"], clips["a2"], clips["b"]], reference, analyzer)
    a, a2, b = (m.summary for m in report.media)
    assert a.score >= 80 and a2.score >= 80
    assert a.pass_rate == 1.0 and a.swaps == []
    assert b.score <= 20 and b.pass_rate == 0.0
    assert len(b.swaps) == 1 and b.swaps[0].n_frames == 36  # the whole clip
    seq = report.sequence
    assert [s.passes for s in seq.seams] == [True, False]
    assert seq.seams[1].distance > report.encoder.threshold
    assert seq.clip_distances[0][1] < report.encoder.threshold < seq.clip_distances[0][2]
    assert seq.worst_seam == 1
    assert report.overall.media_count == 3


def test_character_face_is_best_match_not_largest(clips, reference, analyzer):
    report = score_media([clips["group"]], reference, analyzer)
    m = report.media[0]
    assert m.summary.pass_rate == 1.0 and m.summary.score >= 80
    for f in m.frames:
        assert f.n_faces >= 2
        x0, _, x1, _ = f.box
        assert (x0 + x1) / 2 > 440  # the pasted face at the lower right, not the larger face on the left
    opens = score_media([clips["group"]], reference, analyzer, "opens2v", ScoringOptions(opens2v_frames=4))
    # opens2v takes the largest face as published: a different person here.
    assert opens.media[0].summary.frames_scored == 4 and opens.media[0].summary.pass_rate == 0.0


def test_opens2v_samples_32_uniform_frames(clips, reference, analyzer):
    report = score_media([clips["demo"]], reference, analyzer, "opens2v")
    m = report.media[0]
    assert m.sampling.frame_indices == [int(round(x)) for x in np.linspace(0, 95, 32)]
    assert [f.index for f in m.frames] == m.sampling.frame_indices
    assert m.summary.frames_scored == 32 and m.summary.frames_total == 96
    assert m.summary.detection_rate == 1.0
    sims = [f.similarity for f in m.frames]
    assert all(0.0 <= s <= 1.0 for s in sims)
    assert m.summary.facesim == pytest.approx(np.mean(sims), abs=1e-5)
    assert opens2v_indices(10) == list(range(10))  # short clips: each frame once


def test_report_json_round_trip(demo_report, tmp_path):
    report, worst = demo_report
    again = ScoreReport.model_validate_json(report.model_dump_json())
    assert again == report
    m = report.media[0]
    for key in ("encoder_id", "threshold"):
        assert getattr(report.encoder, key) is not None
    assert report.reference.character_id.startswith("photos:")
    assert m.sampling.protocol == "full" and m.sampling.detect_every >= 1
    assert report.engine_version
    plot = write_plot(report, tmp_path / "plot.png")
    sheet = write_contact_sheet(report, worst, tmp_path / "sheet.png")
    from PIL import Image

    for p in (plot, sheet):
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 400
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_video_without_faces_reports_it(clips, reference, analyzer):
    report = score_media([clips["noface"]], reference, analyzer)
    s = report.media[0].summary
    assert s.detection_rate == 0.0 and s.frames_with_face == 0
    assert s.score is None and "no face" in s.message
    assert report.overall.score is None
    assert ScoreReport.model_validate_json(report.model_dump_json()) == report


@pytest.mark.parametrize("content", [b"", b"this is not a video at all" * 50])
def test_unreadable_video_is_one_line_input_error(tmp_path, content, reference, analyzer):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(content)
    with pytest.raises(InputError) as e:
        score_media([bad], reference, analyzer)
    assert "\n" not in str(e.value) and "broken.mp4" in str(e.value)


def test_folder_skips_non_images(tmp_path, faces_dir, reference, analyzer):
    import shutil

    folder = tmp_path / "stills"
    folder.mkdir()
    shutil.copy(faces_dir / "obama2.jpg", folder / "01.jpg")
    shutil.copy(faces_dir / "biden.jpg", folder / "02.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "03.jpg").write_bytes(b"garbage")
    report = score_media([folder], reference, analyzer)
    m = report.media[0]
    assert m.kind == "images"
    skipped = {Path(s.path).name: s.reason for s in m.skipped}
    assert set(skipped) == {"notes.txt", "03.jpg"}
    assert [Path(f.file).name for f in m.frames] == ["01.jpg", "02.jpg"]
    assert [f.passes for f in m.frames] == [True, False]
    assert ScoreReport.model_validate_json(report.model_dump_json()) == report


def test_reference_from_other_encoder_is_refused(clips, reference, analyzer):
    other = IdentityReference("c1", 3, "mira", "arcface-antelopev2-glintr100", np.zeros(512, np.float32))
    with pytest.raises(InputError, match="flx character reembed mira"):
        score_media([clips["a"]], other, analyzer)


def test_score_frames_in_memory(sprites, reference, analyzer):
    frames = list(render_frames([(sprites["obama.jpg"], 12), (sprites["biden.jpg"], 12)], (320, 180), face_frac=0.5))
    opts = ScoringOptions(min_swap_s=0.0)
    report = score_frames(frames, 24.0, reference, analyzer, options=opts)
    m = report.media[0]
    assert m.kind == "frames" and len(m.frames) == 24
    assert [f.passes for f in m.frames] == [True] * 12 + [False] * 12
    assert m.summary.swaps[0].start_frame == 12
