"""Fetch: force re-downloads, Hub-published hashes are checked before locking, local write failures are named.

There is no network here: huggingface_hub's two network calls (`HfApi.model_info`, `snapshot_download`) and
urllib's `urlopen` are replaced by stand-ins serving real files; everything around them is the real code.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import subprocess
import zipfile
from fnmatch import fnmatchcase
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling
from weights_helpers import flip_byte

from engine._core.errors import OutputError, WeightsIntegrityError
from engine.models.fetch import fetch
from engine.models.hashing import (
    HashMismatch,
    PublishedHash,
    compare_with_published,
    git_blob_sha1,
    published_hashes,
    sha256_file,
)

CID = "clip-vision-h"  # h94/IP-Adapter models/image_encoder: one small git file, one LFS file
CONFIG = "models/image_encoder/config.json"
MODEL = "models/image_encoder/model.safetensors"


def _git_hash_object(path: Path) -> str:
    return subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()


def test_git_blob_sha1_is_gits_object_id(tmp_path):
    for i, data in enumerate([b"", b"{}\n", os.urandom(100_000)]):
        f = tmp_path / f"f{i}"
        f.write_bytes(data)
        assert git_blob_sha1(f) == _git_hash_object(f)


def test_compare_with_published_on_real_files(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1}\n')
    (tmp_path / "w.safetensors").write_bytes(os.urandom(4096))
    ours = {rel: sha256_file(tmp_path / rel) for rel in ("config.json", "w.safetensors")}
    siblings = [
        RepoSibling("config.json", size=9, blob_id=_git_hash_object(tmp_path / "config.json")),
        RepoSibling(
            "w.safetensors",
            size=4096,
            blob_id="1" * 40,  # the pointer file's id: never compared with the content
            lfs=BlobLfsInfo(size=4096, sha256=ours["w.safetensors"], pointer_size=134),
        ),
        RepoSibling("README.md", size=3, blob_id="2" * 40),
    ]
    published = published_hashes(siblings)
    assert published["w.safetensors"].kind == "sha256" and published["config.json"].kind == "git-sha1"
    assert compare_with_published(tmp_path, ours, published) == (
        [],
        {"config.json": "git-sha1", "w.safetensors": "sha256"},
    )

    (tmp_path / "config.json").write_text('{"a": 2}\n')  # same size, other bytes
    ours["w.safetensors"] = "f" * 64
    bad, checked = compare_with_published(tmp_path, ours, published)
    assert [(m.path, m.kind) for m in bad] == [("config.json", "git-sha1"), ("w.safetensors", "sha256")]
    assert checked == {}
    # a size that differs from the published one is named as such
    (tmp_path / "config.json").write_text("{}")
    bad, _ = compare_with_published(tmp_path, {"config.json": "x"}, published)
    assert bad == [HashMismatch("config.json", "size", "9", "2")]
    # files the Hub publishes nothing for are neither checked nor refused
    assert compare_with_published(tmp_path, {"other.bin": "x"}, {"x": PublishedHash("sha256", "y")}) == ([], {})


class FakeHub:
    """Serves `content` (a real folder) as a Hub repo; `serve` may swap what is downloaded for other bytes."""

    def __init__(self, content: Path):
        self.content = content
        self.force_flags: list[bool] = []
        self.serve: dict[str, bytes] = {}
        self.fail_with: OSError | None = None

    def model_info(self, repo_id, revision=None, files_metadata=False, **kw):
        assert files_metadata, "fetch must ask for the files' metadata to get their hashes"
        siblings = []
        for f in sorted(p for p in self.content.rglob("*") if p.is_file()):
            rel = f.relative_to(self.content).as_posix()
            if f.suffix == ".safetensors":
                lfs = BlobLfsInfo(size=f.stat().st_size, sha256=sha256_file(f), pointer_size=134)
                siblings.append(RepoSibling(rel, size=f.stat().st_size, blob_id="0" * 40, lfs=lfs))
            else:
                siblings.append(RepoSibling(rel, size=f.stat().st_size, blob_id=_git_hash_object(f)))
        return SimpleNamespace(sha="c0ffee" * 6 + "abcd", siblings=siblings)

    def snapshot_download(self, repo_id, revision, allow_patterns, local_dir, force_download=False, **kw):
        """Like huggingface_hub: a file already in `local_dir` is kept unless `force_download`."""
        self.force_flags.append(force_download)
        for f in sorted(p for p in self.content.rglob("*") if p.is_file()):
            rel = f.relative_to(self.content).as_posix()
            if not any(fnmatchcase(rel, pat) for pat in allow_patterns):
                continue
            dest = Path(local_dir) / rel
            if dest.exists() and not force_download:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if self.fail_with is not None:
                raise self.fail_with
            if rel in self.serve:
                dest.write_bytes(self.serve[rel])
            else:
                shutil.copyfile(f, dest)
        return str(local_dir)


@pytest.fixture()
def hub(tiny_weights, monkeypatch):
    import huggingface_hub

    twin = tiny_weights("tiny-clip-vision-h").component_dir("tiny-clip-vision-h")
    fake = FakeHub(twin)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, *a, **kw: fake.model_info(*a, **kw))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    return fake


def test_fetch_checks_the_hubs_hashes_and_records_them(tiny_weights, hub):
    store = tiny_weights()
    ent = fetch(store, CID)
    assert ent.revision.startswith("c0ffee")
    assert {rel: lf.published for rel, lf in ent.files.items()} == {CONFIG: "git-sha1", MODEL: "sha256"}
    assert store.read_lock().components[CID].files[MODEL].published == "sha256"
    assert (store.require(CID) / "model.safetensors").is_file()


def test_a_download_that_differs_from_the_hub_records_nothing(tiny_weights, hub):
    store = tiny_weights()
    good = (hub.content / MODEL).read_bytes()
    hub.serve[MODEL] = good[:-1] + bytes([good[-1] ^ 1])  # damaged in transit
    with pytest.raises(WeightsIntegrityError, match=rf"{CID}/{MODEL}.*Hub publishes") as e:
        fetch(store, CID)
    assert "\n" not in str(e.value) and "flx weights fetch clip-vision-h --force" in str(e.value)
    assert CID not in store.read_lock().components
    assert not (store.root / CID / MODEL).exists()  # deleted, so the next fetch downloads it again
    hub.serve.clear()
    assert fetch(store, CID).files[MODEL].sha256 == hashlib.sha256(good).hexdigest()


def test_refetch_of_a_bad_file_keeps_the_old_lock_when_the_new_bytes_are_bad_too(tiny_weights, hub):
    store = tiny_weights()
    before = fetch(store, CID)
    hub.serve[MODEL] = b"\0" * before.files[MODEL].size
    with pytest.raises(WeightsIntegrityError, match="does not match"):
        fetch(store, CID, force=True)
    assert store.read_lock().components[CID] == before


def test_force_downloads_again_and_a_bad_component_is_repaired(tiny_weights, hub):
    store = tiny_weights()
    fetch(store, CID)
    f = store.root / CID / MODEL
    assert fetch(store, CID) == store.read_lock().components[CID] and hub.force_flags == [False]  # verified: no call

    flip_byte(f, keep_times=True)
    assert store.verify([CID])[0].state == "corrupt"
    with pytest.raises(WeightsIntegrityError, match=r"flx weights fetch clip-vision-h --force"):
        store.require(CID)
    fetch(store, CID, force=True)  # the fix the message names
    assert hub.force_flags[-1] is True
    assert sha256_file(f) == sha256_file(hub.content / MODEL)
    assert store.require(CID).is_dir()

    flip_byte(f)
    fetch(store, CID)  # a component known to be bad is downloaded again even without --force
    assert hub.force_flags[-1] is True and store.status(CID).ok


def test_full_disk_during_a_hub_fetch_is_an_output_error(tiny_weights, hub):
    store = tiny_weights()
    (store.root / CID / "models" / "image_encoder").mkdir(parents=True)
    dev_full = store.root / CID / MODEL
    dev_full.symlink_to("/dev/full")  # writes there fail with ENOSPC, as on a full disk
    with pytest.raises(OutputError, match=r"disk is full.*ENOSPC.*--weights-dir"):
        fetch(store, CID, force=True)
    assert CID not in store.read_lock().components


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_write_errors_during_a_hub_fetch_are_not_network_errors(tiny_weights, hub, code):
    store = tiny_weights()
    hub.fail_with = OSError(code, os.strerror(code), str(store.root / CID / MODEL))
    with pytest.raises(OutputError) as e:
        fetch(store, CID)
    assert "Hub" not in str(e.value) and errno.errorcode[code] in str(e.value)


def test_an_unusable_weights_root_is_named_before_any_download(tmp_path, hub):
    from engine._core.settings import EngineSettings
    from engine.models.store import WeightsStore

    (tmp_path / "a-file").write_text("x")
    store = WeightsStore(EngineSettings(home=tmp_path / "home", weights_dir=tmp_path / "a-file" / "weights"))
    with pytest.raises(OutputError, match=r"weights root .* is not writable"):
        fetch(store, CID)
    assert hub.force_flags == []


class _Resp(io.BytesIO):
    def __init__(self, data: bytes, status: int):
        super().__init__(data)
        self.status = status
        self.headers = {"Content-Length": str(len(data))}


def _pack_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in ("glintr100.onnx", "scrfd_10g_bnkps.onnx", "genderage.onnx"):
            z.writestr(f"antelopev2/{name}", name.encode() * 50)
    return buf.getvalue()


def test_url_force_discards_the_partial_download(tiny_weights, monkeypatch):
    """A stale partial (bad bytes from an earlier try) is resumed by a plain fetch; --force starts over."""
    import urllib.request

    store = tiny_weights()
    pack = _pack_zip()
    ranges: list[str | None] = []

    def urlopen(req, timeout=None):
        rng = req.get_header("Range")
        ranges.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        return _Resp(pack[start:], 206 if rng else 200)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    partial = store.root / ".antelopev2.download"
    store.root.mkdir(parents=True)
    partial.write_bytes(b"garbage!" * 10)
    ent = fetch(store, "antelopev2", force=True)
    assert ranges == [None] and not partial.exists()
    assert set(ent.files) == {"glintr100.onnx", "scrfd_10g_bnkps.onnx"}
    assert (store.require("antelopev2") / "glintr100.onnx").read_bytes() == b"glintr100.onnx" * 50


def test_full_disk_during_a_url_download_is_an_output_error(tiny_weights, monkeypatch):
    import urllib.request

    store = tiny_weights()
    monkeypatch.setattr(urllib.request, "urlopen", lambda req, timeout=None: _Resp(_pack_zip(), 200))
    store.root.mkdir(parents=True)
    (store.root / ".antelopev2.download").symlink_to("/dev/full")
    with pytest.raises(OutputError, match="disk is full"):
        fetch(store, "antelopev2")
