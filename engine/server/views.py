"""The JSON shapes of the HTTP contract, built from what the engine returns (no decisions, only presentation).

URLs use character ids (never names): an id is a UUID, so a URL built from one is always a plain path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine._core.errors import InputError

from .errors import NotFound

_RANK = {"fail": 3, "warn": 2, "pass": 1, "ok": 1}
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


def _status(report: dict | None) -> str | None:
    if not report:
        return None
    s = report.get("status") or report.get("overall")
    return "ok" if s in ("pass", "ok") else s if s in ("warn", "fail") else None


def overall_quality(character) -> str | None:
    """The worst reference quality of a character: `ok`, `warn`, `fail`, or None (no reports)."""
    found = [s for s in (_status(r.quality) for r in character.references) if s]
    return max(found, key=lambda s: _RANK[s]) if found else None


def _image_url(character, i: int) -> str:
    return f"/api/characters/{character.id}/references/{i}.png"


def list_extras(character) -> dict[str, Any]:
    """What a list entry adds to the library's summary: the thumbnail URL and the overall quality."""
    has_crop = bool(character.references and character.references[0].head_crop)
    return {"thumbnail": _image_url(character, 0) if has_crop else None, "quality": overall_quality(character)}


def character_row(summary, extras: dict[str, Any]) -> dict[str, Any]:
    """One entry of GET /api/characters."""
    return {**summary.to_dict(), **extras}


def character_detail(character, versions) -> dict[str, Any]:
    """GET /api/characters/{ref}: profile, versions, references with their quality checks, pack, LoRA."""
    refs = []
    for i, r in enumerate(character.references):
        q = dict(r.quality or {})
        refs.append(
            {
                "index": i,
                "source_filename": r.source_filename,
                "weight": r.weight,
                "face_index": r.face_index,
                "image_size": list(r.image_size),
                "pose": r.pose.model_dump(mode="json"),
                "quality": {"status": _status(q), "checks": q.get("checks") or []} if q else None,
                "image": _image_url(character, i) if r.head_crop else None,
            }
        )
    pack = [
        {k: v for k, v in p.model_dump(mode="json").items() if k != "image_png"}
        for p in character.pack
        if p.image_png is not None
    ]
    return {
        "id": character.id,
        "name": character.name,
        "version": character.version,
        "variant": character.variant,
        "parent": character.parent.model_dump(mode="json") if character.parent else None,
        "created": character.created,
        "updated": character.updated,
        "change": character.change,
        "encoders": sorted(character.embeddings),
        "quality": overall_quality(character),
        "profile": character.profile.model_dump(mode="json", exclude_defaults=True),
        "versions": [{"version": v.version, "updated": v.updated, "change": v.change} for v in versions],
        "references": refs,
        "pack": pack,
        "pack_sheet": f"/api/characters/{character.id}/pack.png" if pack else None,
        "lora": character.lora.model_dump(mode="json") if character.lora else None,
    }


def reference_image(character, index: int) -> tuple[bytes, str]:
    """(bytes, media type) of reference `index`'s head-and-shoulders crop."""
    if not 0 <= index < len(character.references) or not character.references[index].head_crop:
        raise NotFound(f"character '{character.name}' has no reference image {index}")
    ref = character.references[index]
    return ref.head_crop, "image/png" if ref.head_crop_format == "png" else "image/jpeg"


def pack_sheet(character) -> bytes:
    """The pack contact sheet as PNG bytes (the same drawing `flx pack` writes)."""
    import tempfile

    from engine.shots.pack import write_pack_sheet

    if not any(p.image_png is not None for p in character.pack):
        raise NotFound(f"character '{character.name}' has no pack images: run a pack shot first")
    with tempfile.TemporaryDirectory(prefix="flx-sheet-") as tmp:
        return write_pack_sheet(character, Path(tmp) / "pack.png").read_bytes()


def import_result(result) -> dict[str, Any]:
    return {
        "status": result.status,
        "id": result.id,
        "name": result.name,
        "version": result.version,
        "warnings": list(getattr(result, "warnings", ()) or ()),
    }


def batch(info) -> dict[str, Any]:
    return info.model_dump(mode="json")


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """A batch's `manifest.json` (written by the runner), or an empty one before its first shot finished."""
    path = Path(out_dir) / "manifest.json"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        return {"files": []}
    if len(data) > MAX_MANIFEST_BYTES:
        raise InputError(f"{path} is over {MAX_MANIFEST_BYTES // 2**20} MiB: not a manifest this engine wrote")
    try:
        doc = json.loads(data)
    except ValueError:
        raise InputError(f"{path} is not valid JSON: re-run the batch to rewrite it") from None
    return doc if isinstance(doc, dict) else {"files": []}


def outputs(info, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """GET /api/outputs entries of one batch: every file of its manifest with a download URL."""
    rows = []
    for f in manifest.get("files") or []:
        if not isinstance(f, dict) or not isinstance(f.get("path"), str):
            continue
        rows.append(
            {
                "job": info.id,
                "path": f["path"],
                "shot": f.get("shot"),
                "kind": f.get("kind"),
                "score": f.get("score"),
                "url": f"/api/outputs/{info.id}/{f['path']}",
                "parameters": f.get("parameters") or {},
                "metadata": f.get("metadata") or {},
            }
        )
    return rows


def media_type(path: Path) -> str:
    return {
        ".png": "image/png",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".webp": "image/webp",
        ".mp4": "video/mp4",
        ".json": "application/json",
        ".txt": "text/plain; charset=utf-8",
        ".safetensors": "application/octet-stream",
        ".flx": "application/octet-stream",
    }.get(path.suffix.lower(), "application/octet-stream")
