"""Damaged media are never scored as if whole: real H.264 clips of the test faces, broken on disk the way
downloads and crashed renders break (corrupt middle, truncated end, garbage among good files)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scoring_clips import SIZE, corrupt_mdat, preroll_trimmed, truncate, write_clip

from engine._core.errors import DamagedMedia, InputError
from engine.scoring import ScoreReport, reference_from_photos, score_media, summary_lines, write_plot
from engine.scoring.demo import load_sprites, render_frames
from engine.scoring.media import DecodeLog, iter_video, iter_video_sampled
from engine.scoring.metrics import gate
from engine.scoring.schema import SCHEMA_VERSION

FRAMES = 72


@pytest.fixture(scope="module")
def analyzer():
    from engine.scoring.reference import analyzer_for

    return analyzer_for()


@pytest.fixture(scope="module")
def reference(analyzer, faces_dir):
    return reference_from_photos([faces_dir / "obama.jpg", faces_dir / "obama2.jpg"], analyzer)


@pytest.fixture(scope="module")
def media(tmp_path_factory, faces_dir, analyzer) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("damaged")
    sprites = load_sprites(faces_dir, analyzer)
    frames = list(render_frames([(sprites["obama2.jpg"], FRAMES)], SIZE))
    good = write_clip(frames, d / "good.mp4")
    fast = write_clip(frames, d / "faststart.mp4", faststart=True)
    folder = d / "folder"
    folder.mkdir()
    shutil.copy(faces_dir / "obama.jpg", folder / "01.jpg")
    shutil.copy(good, folder / "clip.mp4")
    (folder / "junk.mp4").write_bytes(bytes(range(256)) * 40)  # not a video at all
    return {
        "good": good,
        "corrupt": corrupt_mdat(good, d / "corrupt.mp4"),
        "truncated_faststart": truncate(fast, d / "truncated_faststart.mp4", 0.5),
        "truncated_moov_at_end": truncate(good, d / "truncated_moov_at_end.mp4", 0.6),
        "preroll": preroll_trimmed(good, d / "preroll.mp4", 30),
        "folder": folder,
    }


def flx(*args, home):
    env = dict(os.environ, FLX_HOME=str(home), FLX_WEIGHTS_DIR=str(home / "weights"), COLUMNS="300")
    return subprocess.run(
        [sys.executable, "-m", "engine.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    return lines[0]


# ----- decoding ------------------------------------------------------------------------------------------


def test_decoding_goes_on_past_a_corrupt_packet_in_both_decoders(media):
    log = DecodeLog()
    indices = [f.index for f in iter_video(media["corrupt"], log=log)]
    assert log.errors >= 1 and len(log.messages) == min(log.errors, 5)
    assert all("packet at" in m and "\n" not in m for m in log.messages)
    # Frames after the corrupt stretch (the middle of the file) decoded too: not a stop at the first error.
    assert log.frames == len(indices) and log.frames >= FRAMES - 12
    assert indices == list(range(log.frames)) and max(indices) > FRAMES * 0.8
    # The child-process decoder (opens2v) reports the same record back.
    sampled = iter_video_sampled(media["corrupt"], [0, 35, FRAMES - 1])
    got = [f.index for f in sampled]
    assert got and sampled.log.frames == log.frames and sampled.log.errors == log.errors
    clean = iter_video_sampled(media["good"], [0, FRAMES - 1])
    assert [f.index for f in clean] == [0, FRAMES - 1] and clean.log == DecodeLog(frames=FRAMES)


def test_decoder_child_dying_part_way_is_logged_not_raised(tmp_path):
    """ffmpeg crashing on a broken file kills the child after some frames: those frames count, the crash is logged."""
    from engine.scoring.media import _Decoded

    script = (
        "import sys, json; o = sys.stdout.buffer; "
        "o.write((json.dumps({'index': 0, 'time_s': 0.0, 'shape': [2, 2, 3]}) + '\\n').encode()); "
        "o.write(bytes(12)); o.flush(); sys.stderr.write('Segmentation fault\\n'); sys.exit(139)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dec = _Decoded(proc, tmp_path / "x.mp4")
    assert [f.index for f in dec] == [0]
    assert dec.log.errors == 1 and "Segmentation fault" in dec.log.messages[0]
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.exit(1)"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    with pytest.raises(InputError, match="x.mp4"):
        list(_Decoded(proc, tmp_path / "x.mp4"))  # nothing at all decoded: the file is unreadable


# ----- reports -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["full", "opens2v"])
def test_corrupt_middle_is_reported_damaged(media, reference, analyzer, protocol):
    report = score_media([media["corrupt"]], reference, analyzer, protocol)
    m = report.media[0]
    d = m.damage
    assert d.damaged and d.decode_errors >= 1 and d.errors
    assert d.frames_expected == FRAMES and FRAMES - 12 <= d.frames_decoded < FRAMES
    assert report.overall.damaged_media == 1
    assert m.summary.score is not None  # what decoded is still scored...
    line = next(ln for ln in summary_lines(report) if "DAMAGED" in ln)  # ...and the summary says it is partial
    assert re.search(rf"DAMAGED: {d.frames_decoded} of {FRAMES} frames decoded, {d.decode_errors} decode error", line)
    assert ScoreReport.model_validate_json(report.model_dump_json()) == report


@pytest.mark.parametrize("protocol", ["full", "opens2v"])
def test_truncated_faststart_clip_is_damaged_not_whole(media, reference, analyzer, protocol):
    report = score_media([media["truncated_faststart"]], reference, analyzer, protocol)
    d = report.media[0].damage
    assert d.damaged and d.frames_expected == FRAMES and 0 < d.frames_decoded < FRAMES * 0.7
    assert d.frames_missing == FRAMES - d.frames_decoded
    if protocol == "full":
        assert report.media[0].summary.frames_total == d.frames_decoded
    verdict = gate(report, 50)
    assert not verdict.passed and verdict.failure == "damaged"
    assert isinstance(verdict.error(), DamagedMedia) and "truncated_faststart.mp4" in verdict.reason
    assert "--allow-damaged" in verdict.reason and "\n" not in verdict.reason
    assert gate(report, 50, allow_damaged=True).passed  # the frames that decoded show the character


def test_truncated_clip_without_index_is_one_line_error_alone_and_listed_among_others(media, reference, analyzer):
    with pytest.raises(InputError) as e:
        score_media([media["truncated_moov_at_end"]], reference, analyzer)
    assert "\n" not in str(e.value) and "truncated_moov_at_end.mp4" in str(e.value)
    report = score_media([media["good"], media["truncated_moov_at_end"]], reference, analyzer, "opens2v")
    good, bad = report.media
    assert good.damage.damaged is False and good.summary.score >= 80
    assert bad.damage.damaged and "cannot open video" in bad.damage.unreadable and bad.frames == []
    assert bad.summary.score is None and report.overall.score == good.summary.score
    assert any(ln.startswith("    DAMAGED: could not be read") for ln in summary_lines(report))


def test_whole_files_are_not_flagged(media, reference, analyzer):
    # A remux with an edit list (frames before 0 are dropped by decoders; the frame count still has them).
    report = score_media([media["good"], media["preroll"]], reference, analyzer)
    good, pre = (m.damage for m in report.media)
    assert good.damaged is False and good.frames_decoded == good.frames_expected == FRAMES and good.errors == []
    assert pre.damaged is False and pre.frames_decoded == pre.frames_expected == FRAMES - 30
    assert report.overall.damaged_media == 0 and gate(report, 80).passed
    assert not any("DAMAGED" in ln for ln in summary_lines(report))


def test_gate_on_a_whole_file_is_the_score(media, analyzer, faces_dir):
    other = reference_from_photos([faces_dir / "biden.jpg"], analyzer)
    report = score_media([media["good"]], other, analyzer, "opens2v")
    assert report.media[0].damage.damaged is False and report.overall.score < 50
    low = gate(report, 50)
    assert low.failure == "score" and "below --min-score 50" in low.reason and "\n" not in low.reason
    assert low.error().exit_code == 1 and not isinstance(low.error(), DamagedMedia)
    assert gate(report, 0).passed


def test_folder_with_a_garbage_video_scores_the_rest(media, reference, analyzer, tmp_path):
    report = score_media([media["folder"]], reference, analyzer)
    by_name = {Path(m.path).name: m for m in report.media}
    assert set(by_name) == {"clip.mp4", "junk.mp4", "folder"}
    clip, junk, images = by_name["clip.mp4"], by_name["junk.mp4"], by_name["folder"]
    assert clip.damage.damaged is False and clip.summary.frames_total == FRAMES and clip.summary.score >= 80
    assert images.damage.damaged is False and images.summary.frames_scored == 1 and images.summary.pass_rate == 1.0
    assert junk.damage.damaged and "junk.mp4" in junk.damage.unreadable and junk.summary.message
    assert report.overall.media_count == 3 and report.overall.damaged_media == 1
    verdict = gate(report, 50)
    assert verdict.failure == "damaged" and verdict.damaged == (str(media["folder"] / "junk.mp4"),)
    assert gate(report, 50, allow_damaged=True).passed
    assert ScoreReport.model_validate_json(report.model_dump_json()) == report
    assert write_plot(report, tmp_path / "plot.png").stat().st_size > 1000  # a panel with no frames draws


def test_unreadable_image_in_a_set_counts_as_damaged(tmp_path, faces_dir, reference, analyzer):
    folder = tmp_path / "stills"
    folder.mkdir()
    shutil.copy(faces_dir / "obama2.jpg", folder / "01.jpg")
    (folder / "02.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not an image: skipped, not damage")
    report = score_media([folder], reference, analyzer)
    d = report.media[0].damage
    assert d.damaged and (d.frames_expected, d.frames_decoded, d.decode_errors) == (2, 1, 1)
    assert d.errors[0].startswith("02.jpg")
    assert gate(report, 50).failure == "damaged"
    alone = tmp_path / "broken.jpg"
    alone.write_bytes(b"garbage")
    report = score_media([folder / "01.jpg", alone], reference, analyzer)
    assert [m.damage.damaged for m in report.media] == [False, True] and report.media[0].summary.score >= 80


def test_report_records_schema_and_encoder_model(media, reference, analyzer):
    report = score_media([media["good"]], reference, analyzer, "opens2v")
    assert report.schema_version == SCHEMA_VERSION == 2
    assert report.encoder.model_sha256 == analyzer.info.model_sha256
    assert report.commercial_use is None
    with pytest.raises(ValueError):
        ScoreReport.model_validate({**report.model_dump(), "schema_version": 1})


# ----- the command line (a real process, as users run it) ------------------------------------------------


def test_cli_min_score_refuses_damaged_media_unless_allowed(media, faces_dir, tmp_path):
    ref = ["--reference-photo", faces_dir / "obama.jpg"]
    r = flx("score", media["corrupt"], *ref, "--min-score", "50", home=tmp_path)
    assert r.returncode == DamagedMedia.exit_code, r.stderr
    line = one_line(r)
    assert "corrupt.mp4" in line and "decode error" in line and "--allow-damaged" in line
    assert re.search(rf"DAMAGED: \d+ of {FRAMES} frames decoded, \d+ decode error", r.stdout)
    r = flx("score", media["corrupt"], *ref, "--min-score", "50", "--allow-damaged", home=tmp_path)
    assert r.returncode == 0, r.stderr
    r = flx("score", media["folder"], *ref, "--protocol", "opens2v", "--min-score", "50", home=tmp_path)
    assert r.returncode == DamagedMedia.exit_code and "junk.mp4" in one_line(r)
    assert "clip.mp4: score" in r.stdout and "folder: score" in r.stdout


def test_cli_bad_flags_are_one_line_before_scoring(media, faces_dir, tmp_path):
    ref = ["--reference-photo", faces_dir / "obama.jpg"]
    r = flx("score", media["good"], *ref, "--detect-every", "1000", home=tmp_path)
    assert r.returncode == InputError.exit_code
    line = one_line(r)
    assert "--detect-every" in line and "1 to 120" in line
    for flag, name in (("--plot", "p.txt"), ("--sheet", "s.txt"), ("--json", "r.png")):
        r = flx("score", media["good"], *ref, flag, tmp_path / name, home=tmp_path)
        assert r.returncode == InputError.exit_code
        line = one_line(r)
        assert flag in line and name in line
        assert not (tmp_path / name).exists()
    r = flx("score", media["good"], *ref, "--min-score", "150", home=tmp_path)
    assert r.returncode == InputError.exit_code and "0 to 100" in one_line(r)
