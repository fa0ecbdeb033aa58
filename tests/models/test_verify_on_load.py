"""What `require()` checks before every load: stat records per file, re-hash on any change, remembered failures.

On real tiny-twin files; the only stand-in is a counting wrapper around the real sha256 to show which files a
check re-hashes.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from weights_helpers import flip_byte

from engine._core.errors import UnverifiedWeightsWarning, WeightsIntegrityError
from engine.models import store as store_mod

CID = "tiny-instantid-ip-adapter"
FILE = "ip-adapter.safetensors"


@pytest.fixture()
def hashed(monkeypatch):
    """The list of files the store hashes (the real sha256 still runs)."""
    calls: list[str] = []
    real = store_mod.sha256_file

    def counting(path, progress=None):
        calls.append(os.path.basename(path))
        return real(path, progress)

    monkeypatch.setattr(store_mod, "sha256_file", counting)
    return calls


def test_byte_flipped_with_mtime_restored_is_caught_before_load(tiny_weights):
    store = tiny_weights(CID)
    f = store.component_dir(CID) / FILE
    store.require(CID)
    flip_byte(f, keep_times=True)
    lf = store.read_lock().components[CID].files[FILE]
    assert f.stat().st_mtime_ns == lf.mtime_ns and f.stat().st_size == lf.size  # size and mtime say "unchanged"
    with pytest.raises(WeightsIntegrityError, match=f"{FILE} is modified"):
        store.require(CID)


def test_stat_records_make_an_unchanged_load_hash_nothing(tiny_weights, hashed):
    store = tiny_weights(CID)
    hashed.clear()  # the build's own recording
    f = store.component_dir(CID) / FILE
    lf = store.read_lock().components[CID].files[FILE]
    st = f.stat()
    assert (lf.size, lf.mtime_ns, lf.ctime_ns, lf.inode, lf.device) == (
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_dev,
    )
    store.require(CID)
    store.require(CID)
    assert hashed == []  # nothing changed: no byte is read before the load

    os.utime(f)  # a touch: same bytes, new mtime/ctime -> re-hashed once, then the new stat is recorded
    store.require(CID)
    assert hashed == [FILE]
    store.require(CID)
    assert hashed == [FILE]


def test_a_replaced_file_with_a_new_inode_is_rehashed(tiny_weights, hashed):
    store = tiny_weights(CID)
    hashed.clear()
    f = store.component_dir(CID) / FILE
    tmp = f.with_name("copy.tmp")
    shutil.copy2(f, tmp)  # same bytes and mtime, another inode
    os.replace(tmp, f)
    store.require(CID)
    assert hashed == [FILE]


def _forge_lock_hash(store) -> None:
    """Change the locked sha256 but keep the stat record: the file now differs from the lock while every stat
    matches (what bit rot on disk looks like to a stat check)."""
    data = json.loads(store.lock_path.read_text())
    data["components"][CID]["files"][FILE]["sha256"] = "0" * 64
    store.lock_path.write_text(json.dumps(data))


def test_failed_verify_is_remembered_until_a_verify_passes(tiny_weights):
    store = tiny_weights(CID)
    f = store.component_dir(CID) / FILE
    good = f.read_bytes()
    flip_byte(f, keep_times=True)
    (st,) = store.verify([CID])
    assert st.state == "corrupt"
    assert store.read_lock().components[CID].verification.state == "failed"
    f.write_bytes(good)  # put the right bytes back: the stat check passes again...
    assert store.status(CID).state == "failed"
    with pytest.raises(WeightsIntegrityError, match=rf"flx weights verify {CID}"):
        store.require(CID)  # ...but the failed verify is remembered
    (st,) = store.verify([CID])
    assert st.ok and store.read_lock().components[CID].verification.state == "ok"
    assert store.require(CID).is_dir()


def test_stat_check_trusts_unchanged_stat_but_full_mode_and_verify_rehash(tiny_weights):
    store = tiny_weights(CID)
    _forge_lock_hash(store)
    assert store.require(CID).is_dir()  # documented: stat mode does not read unchanged files
    full = tiny_weights(CID, verify_on_load="full")
    with pytest.raises(WeightsIntegrityError, match="modified"):
        full.require(CID)
    # that full check recorded the failure: the default (stat) mode now refuses too
    with pytest.raises(WeightsIntegrityError, match="failed verification"):
        store.require(CID)


def test_re_recording_clears_a_failed_state(tiny_weights, make_tiny_weights_module):
    store = tiny_weights(CID)
    _forge_lock_hash(store)
    assert store.verify([CID])[0].state == "corrupt"
    with pytest.raises(WeightsIntegrityError, match=r"make_tiny_weights.py --force"):
        store.require(CID)
    make_tiny_weights_module.make_tiny_weights(store.settings, only=[CID], force=True, log=lambda line: None)
    assert store.require(CID).is_dir()


def test_allow_unverified_loads_with_a_warning_and_the_real_hashes(tiny_weights):
    from engine.models.hashing import sha256_file

    store = tiny_weights(CID)
    f = store.component_dir(CID) / FILE
    flip_byte(f, keep_times=True)
    lenient = tiny_weights(CID, allow_unverified_weights=True)
    with pytest.warns(UnverifiedWeightsWarning, match=rf"{CID}.*UNVERIFIED"):
        view = lenient.require(CID)
    assert (view / FILE).resolve() == f.resolve()
    assert lenient.unverified_hashes(CID) == {FILE: sha256_file(f)}
    assert lenient.unverified_hashes(CID)[FILE] != lenient.component_hashes(CID)[FILE]


def test_version_1_lock_is_rehashed_once_and_upgraded(tiny_weights, hashed):
    store = tiny_weights(CID)
    data = json.loads(store.lock_path.read_text())
    data["lock_version"] = 1
    ent = data["components"][CID]
    ent.pop("verification")
    for lf in ent["files"].values():
        for k in ("ctime_ns", "inode", "device", "published"):
            lf.pop(k)
    store.lock_path.write_text(json.dumps(data))
    hashed.clear()
    store.require(CID)
    assert hashed == [FILE]
    lock = store.read_lock()
    assert lock.lock_version == 2
    assert lock.components[CID].files[FILE].inode == (store.component_dir(CID) / FILE).stat().st_ino
    store.require(CID)
    assert hashed == [FILE]
