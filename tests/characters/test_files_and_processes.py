"""Files and processes: destinations, temp names after kill -9, readers vs writers, process-wide state (regressions).

Before: export replaced a symlink (or `/dev/stdout`) with a regular file; a killed export left `.a.flx.XXXX.flx.part.flx`,
which `import FOLDER` then picked up; every library open took the write lock, so `list` failed after 11 s while another
process wrote; atomic writes flipped the process umask; the scorer changed torch's process-wide thread count.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from characters_helpers import make_character

from engine._core import atomic
from engine._core.atomic import TEMP_SUFFIX, atomic_write_bytes, clean_stale_temps
from engine._core.errors import OutputError
from engine.characters import CharacterLibrary


def test_non_regular_destinations_are_refused(tmp_path):
    target = tmp_path / "target.flx"
    target.write_bytes(b"keep me")
    link = tmp_path / "link.flx"
    link.symlink_to(target)
    fifo = tmp_path / "pipe.flx"
    os.mkfifo(fifo)
    for dest in (link, fifo, "/dev/null"):
        with pytest.raises(OutputError, match="not a regular file") as e:
            atomic_write_bytes(dest, b"new")
        assert "\n" not in str(e.value)
    assert link.is_symlink() and target.read_bytes() == b"keep me"
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    with CharacterLibrary(tmp_path / "lib.sqlite") as lib:
        lib.add(make_character("ava"))
        with pytest.raises(OutputError, match="not a regular file"):
            lib.export("ava", link)
    assert link.is_symlink() and target.read_bytes() == b"keep me"


def test_a_killed_export_leaves_no_file_a_reader_picks_up(tmp_path):
    out = tmp_path / "exports"
    out.mkdir()
    lib_path = tmp_path / "lib.sqlite"
    with CharacterLibrary(lib_path) as lib:
        lib.add(make_character("ava"))
        lib.export("ava", out / "ava.flx")
    child = textwrap.dedent(
        f"""
        import sys, time
        from engine._core.atomic import atomic_path
        with atomic_path({str(out / "bob.flx")!r}) as tmp:
            tmp.write_bytes(b"half a character")
            print("writing", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    temps = [p.name for p in out.iterdir() if p.name != "ava.flx"]
    assert len(temps) == 1 and temps[0].startswith(".bob.flx.") and temps[0].endswith(TEMP_SUFFIX), temps
    assert not list(out.glob(".*.flx")) and [p.name for p in out.glob("*.flx")] == ["ava.flx"]
    with CharacterLibrary(tmp_path / "other.sqlite") as other:
        assert [r.name for r in other.import_path(out)] == ["ava"]  # the temp is not an import candidate
    assert clean_stale_temps(out)  # the dead writer's temp is removed ...
    assert sorted(p.name for p in out.iterdir()) == ["ava.flx"]
    # ... and a live writer's temp is left alone
    live = out / f".x.flx.{os.getpid()}-{'a' * 12}{TEMP_SUFFIX}"
    live.write_bytes(b"in progress")
    atomic_write_bytes(out / "y.flx", b"data")
    assert live.exists()


def test_readers_do_not_wait_for_a_writer(tmp_path):
    path = tmp_path / "lib.sqlite"
    with CharacterLibrary(path) as lib:
        lib.add(make_character("ava"))
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sqlite3, sys, time
            db = sqlite3.connect({str(path)!r}, isolation_level=None)
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE characters SET updated=updated")
            print("locked", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        env = dict(os.environ, FLX_LIBRARY_PATH=str(path), FLX_HOME=str(tmp_path), COLUMNS="200")
        # the open used to block for its 10 s busy timeout, then fail; 8 s here means it did not wait
        r = subprocess.run(
            [sys.executable, "-m", "engine.cli.main", "character", "list"],
            capture_output=True, text=True, env=env, timeout=8,
        )  # fmt: skip
        assert r.returncode == 0 and "ava" in r.stdout, r.stderr
        with CharacterLibrary(path) as lib:
            assert lib.get("ava").name == "ava"
            lib.touch_last_used("ava")  # a best-effort write gives up quietly instead of failing a score
    finally:
        holder.kill()
        holder.wait()


def test_old_schema_is_migrated_once_and_keeps_every_character(tmp_path):
    """A schema-1 library (ASCII-only NOCASE names) with two names equal under Unicode folding keeps both."""
    path = tmp_path / "lib.sqlite"
    with CharacterLibrary(path) as lib:
        a, b = lib.add(make_character("Ülla", seed=1)), make_character("ülla", seed=2)
        # write the second one as schema 1 would have let an import do (bypassing the new key)
        lib._db.execute("DROP INDEX characters_active_key")
        lib._db.execute(
            "INSERT INTO characters (id, name, created, updated, latest_version) VALUES (?,?,?,?,?)",
            (b.id, b.name, b.created, b.updated, 1),
        )
        lib._write_version(b)
        lib._db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
        lib._db.execute("ALTER TABLE characters DROP COLUMN name_key")
    with CharacterLibrary(path) as lib:
        assert sorted(s.id for s in lib.list()) == sorted([a.id, b.id])
        assert lib.get(a.id).name == "Ülla" and lib.get(b.id).name == "ülla"
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)


def test_atomic_writes_never_touch_the_process_umask(tmp_path, monkeypatch):
    old = os.umask(0o027)
    os.umask(old)
    try:
        os.umask(0o027)

        def no_umask(*a):
            raise AssertionError("os.umask is process-wide: a writer must not change it")

        monkeypatch.setattr(atomic.os, "umask", no_umask)
        p = atomic_write_bytes(tmp_path / "a.bin", b"x")
        assert p.stat().st_mode & 0o777 == 0o640  # 0666 minus the umask, as any new file
    finally:
        monkeypatch.undo()
        os.umask(old)


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    import stat

    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(atomic.os, "fsync", spy)
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert synced == [False, True]  # the file, then its folder


def test_scoring_leaves_torch_threads_alone(faces_dir, monkeypatch):
    import torch

    from engine.identity.images import load_image
    from engine.identity.registry import get_analyzer
    from engine.scoring import reference_from_photos, score_frames

    analyzer = get_analyzer()
    ref = reference_from_photos([faces_dir / "obama.jpg"], analyzer)

    def refuse(n):
        raise AssertionError("torch.set_num_threads is process-wide: the engine must not call it")

    monkeypatch.setattr(torch, "set_num_threads", refuse)
    report = score_frames([load_image(faces_dir / "obama2.jpg")], None, ref, analyzer)
    assert report.media[0].summary.frames_with_face == 1
