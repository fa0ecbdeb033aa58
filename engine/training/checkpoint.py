"""Resumable training checkpoints: `out_dir/checkpoints/step-000123/`, written whole or not at all.

A checkpoint holds what an exact resume needs, and nothing that needs unpickling:
- `lora.safetensors`: the trainable LoRA tensors (peft names, prefixed by the model they belong to);
- `state.pt`: optimizer and lr-scheduler state dicts and the RNG states (torch CPU, CUDA, the trainer's noise
  generator), saved by us with `torch.save` and read back with `torch.load(weights_only=True)` only: tensors,
  numbers, strings, lists and dicts, never arbitrary objects;
- `trainer.json`: the step, the spec, the training set's hashes, the validation history and the best result so far;
- `best.safetensors` (when a validation has scored): the best-likeness LoRA so far, so a resume keeps it.

The data order is a pure function of (seed, position) (`dataset.sample_order`), so the step is the data position.
The folder is written under a temp name (`.step-000123.<pid>-<hex>.flx-tmp`) and renamed into place, so a crash or
a full disk leaves the previous checkpoint intact; the failure is one `OutputError` line. Older checkpoints beyond
`keep` are removed only after the new one is in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine._core.errors import InputError, OutputError

CHECKPOINTS = "checkpoints"
_NAME_RE = re.compile(r"^step-(\d{6,})$")
_TMP_RE = re.compile(r"^\.step-\d+\.(?P<pid>\d+)-[0-9a-f]{12}\.flx-(tmp|old)$")
FILES = ("lora.safetensors", "state.pt", "trainer.json")


@dataclass
class Checkpoint:
    path: Path
    step: int
    lora: dict  # name -> tensor
    state: dict  # optimizer, lr_scheduler, rng
    meta: dict  # trainer.json
    best_lora: dict | None


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def _write_lora(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def _write_state(path: Path, state: dict) -> None:
    import torch

    torch.save(state, path)


def _write_json(path: Path, meta: dict) -> None:
    path.write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _clean_stale(root: Path) -> None:
    """Remove temp folders of writers that died (their pid no longer runs)."""
    from engine._core.atomic import pid_alive

    for entry in root.iterdir() if root.is_dir() else []:
        m = _TMP_RE.match(entry.name)
        if m and entry.is_dir() and not entry.is_symlink() and not pid_alive(int(m["pid"])):
            shutil.rmtree(entry, ignore_errors=True)


def save_checkpoint(
    out_dir: str | os.PathLike,
    step: int,
    *,
    lora: dict,
    state: dict,
    meta: dict,
    best_lora: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically and prune all but the newest `keep`. Returns its folder.

    Raises:
        `OutputError`: the folder cannot be written (disk full, permissions); the previous checkpoint is intact.
    """
    from engine._core.atomic import ensure_writable_dir

    root = ensure_writable_dir(Path(out_dir) / CHECKPOINTS, what="checkpoint folder")
    _clean_stale(root)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.{os.getpid()}-{secrets.token_hex(6)}.flx-tmp"
    try:
        tmp.mkdir()
        _write_lora(tmp / "lora.safetensors", lora)
        if best_lora:
            _write_lora(tmp / "best.safetensors", best_lora)
        _write_state(tmp / "state.pt", state)
        _write_json(tmp / "trainer.json", {**meta, "step": step})
        _fsync_tree(tmp)
        old = None
        if final.exists():  # the same step again (a stop right after a resume): swap, then drop the old one
            old = root / f".{final.name}.{os.getpid()}-{secrets.token_hex(6)}.flx-old"
            os.rename(final, old)
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(
            f"cannot write checkpoint {final.name} in {root}: {e.strerror or e}: free disk space (the previous "
            "checkpoint is kept) and resume"
        ) from None
    for older in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(older, ignore_errors=True)
    return final


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders, oldest first (temp folders and folders missing a file are ignored)."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME_RE.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and all((p / f).is_file() for f in FILES):
            found.append((int(m[1]), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint folder (tensors via safetensors, state via `torch.load(weights_only=True)`).

    Raises:
        `InputError`: a file is unreadable or not what we write (one line naming it; start a fresh run).
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    fix = "delete that checkpoint folder to resume from the one before, or train into a new folder"
    try:
        lora = load_file(str(p / "lora.safetensors"))
        best = load_file(str(p / "best.safetensors")) if (p / "best.safetensors").is_file() else None
        state = torch.load(p / "state.pt", map_location="cpu", weights_only=True)
        meta = json.loads((p / "trainer.json").read_text(encoding="utf-8"))
    except (OSError, SafetensorError, ValueError, RuntimeError, EOFError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise InputError(f"checkpoint {p} is unreadable ({first}): {fix}") from None
    if not isinstance(state, dict) or not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise InputError(f"checkpoint {p} is not a FLX training checkpoint: {fix}")
    return Checkpoint(path=p, step=meta["step"], lora=lora, state=state, meta=meta, best_lora=best)


def rng_state(noise_generator) -> dict[str, Any]:
    """Every RNG a training step draws from: torch's global CPU (and CUDA) generators and the trainer's own."""
    import torch

    out: dict[str, Any] = {"torch": torch.get_rng_state(), "noise": noise_generator.get_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict, noise_generator) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    noise_generator.set_state(state["noise"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = [
    "CHECKPOINTS",
    "Checkpoint",
    "checkpoint_name",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "restore_rng",
    "rng_state",
    "save_checkpoint",
]
