"""Stand-In checkpoints in the weights store: the release's torch pickle is read once with `weights_only=True`,
kept as safetensors (the only file the lock records and loads read), verified like every component.

The pickles here are real `torch.save` files in the release's layout (`scripts/tiny_weights/standin.py`), plus
hostile ones: a pickle whose unpickling would run a command, extra / missing / non-tensor entries.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from engine._core.errors import WeightsIntegrityError

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))

from tiny_weights.standin import standin_state_dict  # noqa: E402

TINY = "tiny-standin-wan21-t2v-14b"
REAL = "standin-wan21-t2v-14b"
CKPT = "Stand-In_wan2.1_T2V_14B.ckpt"
SAFE = "Stand-In_wan2.1_T2V_14B.safetensors"


class _RunsCode:
    """Unpickling this runs `touch <marker>`: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _manifest_for_tiny_release():
    """The real Stand-In entry, with the tensor count of the tiny transformer (2 blocks x 6)."""
    from engine._core.settings import repo_root
    from engine.models.manifest import Manifest, load_manifest

    m = load_manifest(repo_root() / "weights_manifest.json")
    comps = [
        c.model_copy(update={"convert": c.convert.model_copy(update={"tensors": 12})}) if c.id == REAL else c
        for c in m.components
    ]
    return Manifest(components=comps)


@pytest.fixture()
def store(tmp_path):
    from engine._core.settings import EngineSettings
    from engine.models.store import WeightsStore

    settings = EngineSettings(home=tmp_path / "home", weights_dir=tmp_path / "weights")
    return WeightsStore(settings, manifest=_manifest_for_tiny_release())


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_the_store_keeps_only_the_converted_safetensors(tiny_store):
    """After the tiny twin is built (a pickle, converted in the build folder), the lock records one file, the
    safetensors, plus the pickle's sha256 as `converted_from`; the pickle is gone and the load view holds only
    the safetensors."""
    from safetensors import safe_open

    lock = tiny_store.read_lock().components[TINY]
    assert list(lock.files) == [SAFE]
    assert list(lock.converted_from) == [CKPT] and len(lock.converted_from[CKPT]) == 64
    folder = tiny_store.component_dir(TINY)
    assert sorted(p.name for p in folder.iterdir()) == [SAFE]
    view = tiny_store.require(TINY)
    assert sorted(p.name for p in view.iterdir()) == [SAFE]
    with safe_open(str(view / SAFE), "pt") as f:
        assert f.metadata() == {"converted_from": f"{CKPT} sha256:{lock.converted_from[CKPT]}"}
        assert len(list(f.keys())) == 12


def test_a_tampered_converted_file_is_refused_like_any_component(make_tiny_weights_module, tmp_path):
    """The converted file is verified before every load: one flipped byte and the load is refused."""
    from engine._core.settings import EngineSettings
    from engine.models.store import WeightsStore

    settings = EngineSettings(home=tmp_path / "h2", weights_dir=tmp_path / "w2")
    make_tiny_weights_module.make_tiny_weights(settings, only=[TINY], log=lambda line: None)
    st = WeightsStore(settings)
    f = st.component_dir(TINY) / SAFE
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match=f"{SAFE} is modified"):
        st.require(TINY)


def test_a_pickle_that_would_run_code_is_refused_unread(store, tmp_path):
    """`weights_only=True` refuses anything but tensors and plain containers: the command never runs, nothing is
    written, and the refusal is one line naming the file and the fix."""
    from engine.models.fetch import convert_component

    marker = tmp_path / "pwned"
    folder = tmp_path / "c"
    folder.mkdir()
    sd = standin_state_dict(0)
    sd["blocks.0.self_attn.q_loras.down.weight"] = _RunsCode(marker)
    torch.save(sd, folder / CKPT)
    with pytest.raises(WeightsIntegrityError, match="holds more than tensors") as e:
        convert_component(store.manifest.get(REAL), folder)
    msg = str(e.value)
    assert "\n" not in msg and CKPT in msg and "weights_only=True" in msg and "flx weights fetch" in msg
    assert "posix.system" in msg or "os.system" in msg
    assert not marker.exists()
    assert not (folder / SAFE).exists()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda sd: sd.update({"blocks.0.self_attn.o_loras.down.weight": torch.zeros(128, 24)}), "outside the layout"),
        (lambda sd: sd.update({"head.weight": torch.zeros(2)}), "key 'head.weight'"),
        (lambda sd: sd.pop("blocks.1.self_attn.v_loras.up.weight"), "11 tensors, the release has 12"),
        (lambda sd: sd.update({"blocks.1.self_attn.v_loras.up.weight": [1.0, 2.0]}), "not a tensor"),
    ],
    ids=["unknown-projection", "unknown-key", "missing-key", "non-tensor"],
)
def test_unknown_missing_and_non_tensor_entries_are_refused(store, tmp_path, change, expected):
    from engine.models.fetch import convert_component

    folder = tmp_path / "c"
    folder.mkdir()
    sd = standin_state_dict(0)
    change(sd)
    torch.save(sd, folder / CKPT)
    with pytest.raises(WeightsIntegrityError, match=expected) as e:
        convert_component(store.manifest.get(REAL), folder)
    assert "\n" not in str(e.value)
    assert not (folder / SAFE).exists()


def test_a_wrapped_state_dict_converts_like_a_plain_one(store, tmp_path):
    """The release loader accepts `{"state_dict": ...}`; so does the conversion, to the same tensors."""
    from safetensors.torch import load_file

    from engine.models.fetch import convert_component

    entry = store.manifest.get(REAL)
    out = {}
    for name, obj in (("plain", standin_state_dict(3)), ("wrapped", {"state_dict": standin_state_dict(3)})):
        folder = tmp_path / name
        folder.mkdir()
        torch.save(obj, folder / CKPT)
        digest = _sha(folder / CKPT)
        assert convert_component(entry, folder) == {CKPT: digest}
        assert not (folder / CKPT).exists()  # ours (a download): removed once converted
        out[name] = load_file(str(folder / SAFE))
    assert out["plain"].keys() == out["wrapped"].keys()
    assert all(torch.equal(out["plain"][k], out["wrapped"][k]) for k in out["plain"])


def test_import_converts_into_the_weights_root_and_leaves_the_users_file(store, tmp_path):
    """`flx weights import` of a folder with the release's pickle: the safetensors goes into the weights root
    (the user's folder is only read), the lock records it with the pickle's hash, and it loads."""
    from engine.adapters.standin import load_standin_weights
    from engine.models.fetch import import_weights

    user = tmp_path / "downloads" / "Stand-In"
    user.mkdir(parents=True)
    torch.save(standin_state_dict(5), user / CKPT)
    before = _sha(user / CKPT)
    assert import_weights(store, user, REAL) == [REAL]
    assert _sha(user / CKPT) == before and not (user / SAFE).exists()
    lock = store.read_lock().components[REAL]
    assert lock.path is None and list(lock.files) == [SAFE] and lock.converted_from == {CKPT: before}
    weights = load_standin_weights(store.require(REAL) / SAFE, name=REAL)
    assert (weights.num_blocks, weights.rank, weights.dim) == (2, 128, 24)


def test_fetch_checks_the_pickle_against_the_hub_before_reading_it(store, tmp_path, monkeypatch):
    """A download is compared with the sha256 the Hub publishes first: a mismatch is deleted unread (torch.load is
    never called) and nothing is locked; a match is converted and locked."""
    import huggingface_hub
    from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling

    from engine.models.fetch import fetch

    served = tmp_path / "hub"
    served.mkdir()
    torch.save(standin_state_dict(9), served / CKPT)
    good = _sha(served / CKPT)
    published = {"sha": good}

    def model_info(self, repo_id, revision=None, files_metadata=False, **kw):
        size = (served / CKPT).stat().st_size
        lfs = BlobLfsInfo(size=size, sha256=published["sha"], pointer_size=134)
        return SimpleNamespace(sha="ab" * 20, siblings=[RepoSibling(CKPT, size=size, blob_id="0" * 40, lfs=lfs)])

    def snapshot_download(repo_id, revision, allow_patterns, local_dir, force_download=False, **kw):
        assert allow_patterns == [CKPT]
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        (Path(local_dir) / CKPT).write_bytes((served / CKPT).read_bytes())
        return local_dir

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)

    published["sha"] = "f" * 64
    real_load = torch.load

    def no_load(*a, **kw):
        raise AssertionError("a file that failed the Hub's hash was unpickled")

    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(WeightsIntegrityError, match="deleted unread") as e:
        fetch(store, REAL)
    assert "\n" not in str(e.value)
    assert REAL not in store.read_lock().components and not (store.root / REAL / CKPT).exists()

    monkeypatch.setattr(torch, "load", real_load)
    published["sha"] = good
    ent = fetch(store, REAL)
    assert list(ent.files) == [SAFE] and ent.converted_from == {CKPT: good}
    assert sorted(p.name for p in (store.root / REAL).iterdir() if not p.name.startswith(".")) == [SAFE]


def test_loading_reads_only_a_complete_safetensors(tmp_path):
    """`load_standin_weights` never opens a pickle, and refuses a file that is not the release's layout."""
    from safetensors.torch import save_file

    from engine.adapters.standin import load_standin_weights

    torch.save(standin_state_dict(0), tmp_path / CKPT)
    with pytest.raises(WeightsIntegrityError, match="converted .safetensors"):
        load_standin_weights(tmp_path / CKPT, name=REAL)
    sd = standin_state_dict(0)
    del sd["blocks.1.self_attn.k_loras.down.weight"]
    save_file(sd, str(tmp_path / "a.safetensors"))
    with pytest.raises(WeightsIntegrityError, match=r"lacks blocks\.1\.self_attn\.k_loras\.down\.weight") as e:
        load_standin_weights(tmp_path / "a.safetensors", name=REAL, fix="re-fetch it")
    assert "\n" not in str(e.value)
    sd = standin_state_dict(0, rank=64)
    save_file(sd, str(tmp_path / "b.safetensors"))
    with pytest.raises(WeightsIntegrityError, match="rank 64"):
        load_standin_weights(tmp_path / "b.safetensors", name=REAL)
    sd = standin_state_dict(0)
    sd["blocks.0.self_attn.q_loras.up.weight"] = torch.zeros(24, 64)
    save_file(sd, str(tmp_path / "c.safetensors"))
    with pytest.raises(WeightsIntegrityError, match="shapes"):
        load_standin_weights(tmp_path / "c.safetensors", name=REAL)


def test_the_manifest_names_the_release_files_and_their_base_models():
    """The real entries: the three BowenXue/Stand-In files, converted, each on its base model's role; the licence
    is marked unverified and treated as non-commercial until checked."""
    from engine._core.settings import repo_root
    from engine.models.manifest import load_manifest

    m = load_manifest(repo_root() / "weights_manifest.json")
    files = {}
    for cid in ("standin-wan21-t2v-14b", "standin-wan22-t2v-a14b-high", "standin-wan22-t2v-a14b-low"):
        e = m.get(cid)
        assert e.source.type == "hub" and e.source.repo_id == "BowenXue/Stand-In"
        assert e.convert.tensors == 240 and e.locked_files == [e.convert.target] == [e.weight_name]
        assert e.license.commercial_use is False and "nverified" in e.license.note
        files[cid] = e.files
    assert files["standin-wan21-t2v-14b"] == [CKPT]
    assert files["standin-wan22-t2v-a14b-high"] == ["Stand-In_wan2.2_T2V_A14B_high.ckpt"]
    assert m.get("wan21-t2v-14b").source.repo_id == "Wan-AI/Wan2.1-T2V-14B-Diffusers"
    assert m.get("wan22-t2v-a14b").source.repo_id == "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
    assert "transformer_2/*" in m.get("wan22-t2v-a14b").files


def test_the_tiny_twins_are_deterministic_and_distinct(make_tiny_weights_module, tmp_path):
    """Same seed, same bytes (the pickle and what it converts to); the three tiny checkpoints differ from each
    other, as the real three do (an expert must not silently get its sibling's weights)."""
    from tiny_weights import BUILDERS

    from engine._core.settings import EngineSettings
    from engine.models.store import WeightsStore

    for name in ("standin_wan21_t2v_14b", "standin_wan22_t2v_a14b_low"):
        BUILDERS[name](tmp_path / f"{name}-a", 0)
        BUILDERS[name](tmp_path / f"{name}-b", 0)
        (a,), (b,) = (list((tmp_path / f"{name}-{x}").iterdir()) for x in "ab")
        assert a.read_bytes() == b.read_bytes()
    ids = ["tiny-standin-wan21-t2v-14b", "tiny-standin-wan22-t2v-a14b-high", "tiny-standin-wan22-t2v-a14b-low"]
    digests = []
    for run in ("1", "2"):
        settings = EngineSettings(home=tmp_path / f"h{run}", weights_dir=tmp_path / f"w{run}")
        make_tiny_weights_module.make_tiny_weights(settings, only=ids, log=lambda line: None)
        digests.append([WeightsStore(settings).component_digest(i) for i in ids])
    assert digests[0] == digests[1] and len(set(digests[0])) == 3
