"""Getting weights onto disk: Hub downloads (resumable, with progress), URL archives, and
registering files a user already has (`import`), hashing in place instead of copying.

Hub downloads are checked against the hashes the Hub publishes (LFS sha256, git blob id of small
files) before anything is locked, so the lock is not trust-on-first-download for Hub files.
"""

from __future__ import annotations

import errno
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from engine._core.errors import InputError, ModelNotFound, NetworkUnavailable, OutputError, WeightsIntegrityError

from .hashing import PublishedHash, compare_with_published, published_hashes, sha256_file
from .manifest import ComponentEntry
from .store import LockEntry, WeightsStore, fix_hint, matched_files

OFFLINE_HINT = (
    "on a machine with internet run `flx weights fetch {id} --weights-dir DIR`, copy DIR/{id} to "
    "{dest}, then run `flx weights import {dest} --id {id}`"
)

# Local write failures: never "cannot reach the Hub".
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def fetch(store: WeightsStore, component_id: str, *, force: bool = False) -> LockEntry:
    """Download one component into the weights root, check it against the Hub's hashes, and lock it.

    `force` downloads every file again (and discards a partial URL download). A component whose files fail
    verification is downloaded again even without `force`: the files on disk are known to be bad.
    """
    entry = store.manifest.get(component_id)
    dest = store.root / component_id
    if entry.is_generated:
        raise InputError(f"'{component_id}' is a generated tiny twin, not a download: {fix_hint(entry)}")
    st = store.status(component_id)
    if not force and st.state == "verified":
        return st.lock
    if store.settings.offline:
        raise NetworkUnavailable(
            f"offline mode is on, cannot fetch '{component_id}': " + OFFLINE_HINT.format(id=component_id, dest=dest)
        )
    force_download = force or st.state in ("corrupt", "failed")
    _check_writable(store.root)
    try:
        if entry.source.type == "hub":
            revision, published = _fetch_hub(entry, dest, force_download)
        else:
            revision, published = _fetch_url(entry, dest, force_download), {}
        converted = None
        if entry.convert is not None:  # the pickle is checked against the Hub's hash before it is read at all
            _check_source_published(entry, dest, published)
            converted = convert_component(entry, dest)
        candidate = store.hash_entry(component_id, revision=revision, converted_from=converted)
    except OSError as e:
        local = _as_output_error(e, entry, store.root)
        if local is None:
            raise
        raise local from None
    _check_published(candidate, dest, published, entry)
    return store.commit(component_id, candidate)


def _check_published(candidate: LockEntry, dest: Path, published: dict[str, PublishedHash], entry) -> None:
    """Refuse (recording nothing) any file that differs from the hash the Hub publishes; mark the ones that match."""
    mismatches, checked = compare_with_published(
        dest, {rel: lf.sha256 for rel, lf in candidate.files.items()}, published
    )
    if mismatches:
        for m in mismatches:  # the bad file goes, so the next fetch downloads it again
            (dest / m.path).unlink(missing_ok=True)
        m = mismatches[0]
        raise WeightsIntegrityError(
            f"'{entry.id}/{m.path}' does not match the {m.kind} the Hub publishes for it (expected "
            f"{m.expected[:16]}…, got {m.actual[:16]}…): the download was damaged or altered, so it was deleted "
            f"and nothing was locked ({len(mismatches)} file(s)): fetch again with `flx weights fetch {entry.id} --force`"
        )
    for rel, kind in checked.items():
        candidate.files[rel].published = kind


def _check_source_published(entry: ComponentEntry, dest: Path, published: dict[str, PublishedHash]) -> None:
    """Refuse a downloaded publisher file that differs from the hash the Hub publishes, before converting it."""
    src = entry.convert.source
    mismatches, _ = compare_with_published(dest, {src: sha256_file(dest / src)}, published)
    if mismatches:
        (dest / src).unlink(missing_ok=True)
        m = mismatches[0]
        raise WeightsIntegrityError(
            f"'{entry.id}/{src}' does not match the {m.kind} the Hub publishes for it (expected {m.expected[:16]}…, "
            f"got {m.actual[:16]}…): it was deleted unread and nothing was locked: fetch again with "
            f"`flx weights fetch {entry.id} --force`"
        )


# ----- conversion -----------------------------------------------------------------------------------------------
def _refusal_reason(err: BaseException) -> str:
    """The line of torch's weights-only refusal that names what was refused (its message is a page long)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        low = ln.lower()
        if ("unsupported" in low or "not an allowed" in low) and "pytorch 2.6" not in low:
            return ln.rstrip(".")
    return type(err).__name__


def read_tensor_pickle(path: Path, entry: ComponentEntry) -> dict:
    """A publisher's torch pickle as a flat {name: tensor} dict: `torch.load(weights_only=True)` (no code runs,
    only tensors and plain containers are rebuilt), unwrapped, then every name checked against the manifest."""
    import pickle
    import re
    import warnings
    import zipfile

    import torch

    spec = entry.convert
    fix = fix_hint(entry)
    where = f"'{entry.id}/{spec.source}'"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols on the way to refusing them
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise WeightsIntegrityError(
            f"{where} holds more than tensors, so it was not loaded (torch.load with weights_only=True refused it: "
            f"{_refusal_reason(e)}): it is not the publisher's checkpoint: {fix}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsIntegrityError(f"{where} is not a readable torch checkpoint ({first[:120]}): {fix}") from None
    for key in spec.unwrap:
        if isinstance(obj, dict) and key in obj:
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsIntegrityError(f"{where} holds a {type(obj).__name__}, not a dict of tensors: {fix}")
    pattern = re.compile(spec.keys)
    for name, value in obj.items():
        if not isinstance(name, str) or not pattern.fullmatch(name) or not isinstance(value, torch.Tensor):
            what = "an entry that is not a tensor" if isinstance(name, str) and pattern.fullmatch(name) else "key"
            raise WeightsIntegrityError(f"{where} has {what} '{name}' outside the layout {entry.id} expects: {fix}")
    if spec.tensors is not None and len(obj) != spec.tensors:
        raise WeightsIntegrityError(f"{where} has {len(obj)} tensors, the release has {spec.tensors}: {fix}")
    return obj


def convert_component(entry: ComponentEntry, folder: Path, source_folder: Path | None = None) -> dict[str, str]:
    """Run the entry's `convert` step: read the publisher file (in `source_folder`, default `folder`) once with
    `weights_only=True`, write the safetensors into `folder` atomically, and delete the publisher file when it
    was ours (a download or a generated twin; never the user's file on import).

    Returns:
        `dict[str, str]`: {publisher file: its sha256}, for the lock's `converted_from`.
    """
    from safetensors.torch import save_file

    from engine._core.atomic import atomic_path

    spec = entry.convert
    src_dir = Path(source_folder) if source_folder is not None else Path(folder)
    src = src_dir / spec.source
    if not src.is_file():
        raise ModelNotFound(f"'{entry.id}' lacks {spec.source} in {src_dir}: {fix_hint(entry)}")
    digest = sha256_file(src)
    tensors = read_tensor_pickle(src, entry)
    # fresh contiguous copies: safetensors refuses views and shared storage
    data = {k: v.detach().clone().contiguous() for k, v in sorted(tensors.items())}
    # one metadata key: safetensors writes its metadata map in hash order, so two keys would make the bytes vary
    with atomic_path(Path(folder) / spec.target) as tmp:
        save_file(data, str(tmp), metadata={"converted_from": f"{spec.source} sha256:{digest}"})
    if source_folder is None:
        src.unlink()
    return {spec.source: digest}


def _check_writable(root: Path) -> None:
    """Fail before any download when the weights root cannot take files (read-only, no permission, not a folder)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".flx-probe-"):
            pass
    except OSError as e:
        raise OutputError(
            f"the weights root {root} is not writable ({e.strerror or e}): fix its permissions, or choose another "
            "weights root with --weights-dir / FLX_WEIGHTS_DIR"
        ) from None


def _as_output_error(e: BaseException, entry: ComponentEntry, root: Path) -> OutputError | None:
    """An OutputError for a full disk or an unwritable weights root anywhere in the exception chain, else None."""
    seen = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        code = getattr(cur, "errno", None) if isinstance(cur, OSError) else None
        where = getattr(cur, "filename", None) or root
        if code in DISK_FULL:
            return OutputError(
                f"the disk is full while fetching '{entry.id}' into {where} ({errno.errorcode[code]}; ~{entry.size_gb:g} "
                "GB needed): free space, or choose another weights root with --weights-dir / FLX_WEIGHTS_DIR"
            )
        if code in NOT_WRITABLE:
            return OutputError(
                f"cannot write '{entry.id}' into {where} ({errno.errorcode[code]}: {cur.strerror}): make {root} "
                "writable, or choose another weights root with --weights-dir / FLX_WEIGHTS_DIR"
            )
        cur = cur.__cause__ or cur.__context__
    return None


def _fetch_hub(entry: ComponentEntry, dest: Path, force_download: bool) -> tuple[str, dict[str, PublishedHash]]:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    src = entry.source
    try:
        info = HfApi().model_info(src.repo_id, revision=src.revision, files_metadata=True)
        revision = info.sha or src.revision
        snapshot_download(
            repo_id=src.repo_id,
            revision=revision,
            allow_patterns=list(entry.files),
            local_dir=str(dest),
            force_download=force_download,
        )
    except HfHubHTTPError as e:
        code = getattr(e.response, "status_code", None)
        raise InputError(
            f"the Hub refused '{src.repo_id}' (HTTP {code}): accept its licence on the Hub, log in with "
            "`hf auth login`, then fetch again"
        ) from None
    except Exception as e:
        local = _as_output_error(e, entry, dest.parent)
        if local is not None:
            raise local from None
        if not (isinstance(e, (OfflineModeIsEnabled, LocalEntryNotFoundError, OSError)) or _is_network_error(e)):
            raise  # a programming error, not the network
        raise NetworkUnavailable(
            f"cannot reach the Hugging Face Hub to fetch '{entry.id}' ({type(e).__name__}): "
            + OFFLINE_HINT.format(id=entry.id, dest=dest)
        ) from None
    return revision, published_hashes(info.siblings or [])


def _is_network_error(e: BaseException) -> bool:
    """huggingface_hub's HTTP stack raises its client library's own errors (httpx/httpcore/requests/urllib3)."""
    return type(e).__module__.split(".")[0].rstrip("0123456789") in ("httpx", "httpcore", "requests", "urllib3")


def _fetch_url(entry: ComponentEntry, dest: Path, force_download: bool = False) -> str:
    src = entry.source
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.parent / f".{entry.id}.download"
    if force_download:  # a resumed partial could be the bad bytes themselves
        partial.unlink(missing_ok=True)
    try:
        _download_resumable(src.url, partial)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        local = _as_output_error(e, entry, dest.parent)
        if local is not None:
            raise local from None
        raise NetworkUnavailable(
            f"cannot download '{entry.id}' from {src.url} ({e}): " + OFFLINE_HINT.format(id=entry.id, dest=dest)
        ) from None
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{entry.id}.") as tmp:
        tmp_path = Path(tmp)
        if src.archive == "zip":
            _safe_unzip(partial, tmp_path)
            inner = tmp_path / src.strip_prefix if src.strip_prefix else tmp_path
            if not inner.is_dir():
                partial.unlink(missing_ok=True)
                raise InputError(
                    f"the archive for '{entry.id}' has no '{src.strip_prefix}/' folder: the download is "
                    f"not the expected pack; fetch again or import the folder with `flx weights import`"
                )
        else:
            inner = tmp_path
            shutil.move(str(partial), inner / Path(src.url).name)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(inner), dest)
    partial.unlink(missing_ok=True)
    return src.url


def _download_resumable(url: str, partial: Path) -> None:
    from tqdm import tqdm

    have = partial.stat().st_size if partial.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file is already complete
            return
        raise
    with resp:
        mode = "ab" if resp.status == 206 else "wb"
        total = int(resp.headers.get("Content-Length") or 0) + (have if mode == "ab" else 0)
        with (
            open(partial, mode) as f,
            tqdm(
                total=total or None, initial=have if mode == "ab" else 0, unit="B", unit_scale=True, desc=partial.name
            ) as bar,
        ):
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))


def _safe_unzip(archive: Path, out: Path) -> None:
    """Unzip refusing absolute paths and `..` members (zip-slip)."""
    try:
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if not (out / name).resolve().is_relative_to(out.resolve()):
                    raise InputError(f"archive {archive.name} has an unsafe member '{name}': refusing to unpack")
            z.extractall(out)
    except zipfile.BadZipFile:
        archive.unlink(missing_ok=True)
        raise InputError(
            f"the download {archive.name} is not a valid zip (damaged or not the pack): fetch again"
        ) from None


# ----- import ---------------------------------------------------------------------------------
def _candidate_folders(path: Path) -> list[Path]:
    """Folders worth matching: the path itself, Hub-cache snapshots, and sub-folders (ComfyUI). Dot-folders
    (the store's load views, caches, partial downloads) are never candidates."""
    cands = [path]
    snaps = path / "snapshots"
    if snaps.is_dir():  # a Hub cache repo folder: models--org--name/snapshots/<sha>/
        cands = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    else:
        cands += [
            p
            for p in sorted(path.rglob("*"))
            if p.is_dir()
            and len(p.relative_to(path).parts) <= 3
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
    return cands


def _folder_matches(folder: Path, entry: ComponentEntry, patterns: list[str] | None = None) -> bool:
    return folder.is_dir() and not matched_files(folder, entry, patterns)[1]


def _import_converted(store: WeightsStore, entry: ComponentEntry, folder: Path) -> None:
    """A folder with the publisher's pickle: convert it into the weights root (the user's folder is only read)."""
    dest = store.root / entry.id
    dest.mkdir(parents=True, exist_ok=True)
    converted = convert_component(entry, dest, source_folder=folder)
    store.record(entry.id, revision=f"imported:{folder}", source=f"import:{folder}", converted_from=converted)


def import_weights(store: WeightsStore, path: Path, component_id: str | None = None) -> list[str]:
    """Register existing files in place (hashing, not copying). Returns the component ids recorded."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(
            f"nothing to import at {path}: give an existing folder (a Hub cache, a ComfyUI models/ folder)"
        )
    entries = (
        [store.manifest.get(component_id)]
        if component_id
        else [c for c in store.manifest.components if not c.is_generated]
    )
    recorded = []
    others = {(store.root / c.id).resolve(): c.id for c in store.manifest.components}
    for entry in entries:
        for folder in _candidate_folders(path):
            if others.get(folder.resolve(), entry.id) != entry.id:
                continue  # another component's own folder in the root (e.g. a tiny twin with the same layout)
            if (
                entry.convert is not None
                and not _folder_matches(folder, entry)
                and _folder_matches(folder, entry, list(entry.files))
            ):
                _import_converted(store, entry, folder)
                recorded.append(entry.id)
                break
            if _folder_matches(folder, entry):
                revision = folder.name if folder.parent.name == "snapshots" else f"imported:{folder}"
                inside_root = folder.resolve() == (store.root / entry.id).resolve()
                store.record(
                    entry.id, revision=revision, source=f"import:{folder}", path=None if inside_root else folder
                )
                recorded.append(entry.id)
                break
    if not recorded:
        want = ", ".join(entries[0].files) if component_id else "the files of any manifest entry"
        raise ModelNotFound(f"no weights component found under {path}: expected {want}")
    return recorded
