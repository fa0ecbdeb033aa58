"""File hashing for the weights lock, and the comparison with the hashes the Hugging Face Hub publishes.

sha256, because the Hub reports sha256 for LFS files, so a hash we record can be compared with the one the
Hub publishes. Small non-LFS files (configs, tokenizers) are published by their git blob id instead: the
sha1 of `b"blob <size>\\0" + content`, which `git_blob_sha1` computes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file's content (what the Hub reports as `blob_id` for non-LFS files)."""
    path = Path(path)
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class PublishedHash:
    """What the Hub publishes for one file: `kind` is "sha256" (LFS) or "git-sha1" (a plain git blob)."""

    kind: str
    value: str
    size: int | None = None


@dataclass(frozen=True)
class HashMismatch:
    path: str
    kind: str  # "sha256", "git-sha1" or "size"
    expected: str
    actual: str


def published_hashes(siblings: Iterable) -> dict[str, PublishedHash]:
    """{repo path: PublishedHash} from `HfApi().model_info(..., files_metadata=True).siblings`.

    An LFS file is published by the sha256 of its content (`sibling.lfs.sha256`); its `blob_id` is the id of
    the pointer file, not of the content, so it is used only for files without `lfs`.
    """
    out: dict[str, PublishedHash] = {}
    for s in siblings or ():
        lfs = getattr(s, "lfs", None)
        sha = (lfs.get("sha256") if isinstance(lfs, Mapping) else getattr(lfs, "sha256", None)) if lfs else None
        if sha:
            size = lfs.get("size") if isinstance(lfs, Mapping) else getattr(lfs, "size", None)
            out[s.rfilename] = PublishedHash("sha256", sha.lower(), size)
        elif getattr(s, "blob_id", None):
            out[s.rfilename] = PublishedHash("git-sha1", s.blob_id.lower(), getattr(s, "size", None))
    return out


def compare_with_published(
    folder: Path, sha256s: Mapping[str, str], published: Mapping[str, PublishedHash]
) -> tuple[list[HashMismatch], dict[str, str]]:
    """Check downloaded files against the Hub's published hashes.

    Args:
        folder (`Path`): the component folder (repo layout).
        sha256s (`Mapping[str, str]`): {relative path: sha256 we computed} for the files about to be locked.
        published (`Mapping[str, PublishedHash]`): from `published_hashes`.

    Returns:
        `(mismatches, checked)`: every file whose size or hash differs from the published one, and {path: kind}
        for the files that matched a published hash (files the Hub publishes nothing for are in neither).
    """
    mismatches: list[HashMismatch] = []
    checked: dict[str, str] = {}
    for rel, sha in sorted(sha256s.items()):
        pub = published.get(rel)
        if pub is None:
            continue
        p = Path(folder) / rel
        size = p.stat().st_size
        if pub.size is not None and pub.size != size:
            mismatches.append(HashMismatch(rel, "size", str(pub.size), str(size)))
            continue
        actual = sha.lower() if pub.kind == "sha256" else git_blob_sha1(p)
        if actual != pub.value:
            mismatches.append(HashMismatch(rel, pub.kind, pub.value, actual))
        else:
            checked[rel] = pub.kind
    return mismatches, checked
