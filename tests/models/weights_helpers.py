"""Helpers for weights-store tests: poison a component folder the ways a real one gets poisoned."""

from __future__ import annotations

import json
import os
from pathlib import Path

SHARD = "diffusion_pytorch_model-00001-of-00001.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"


def drop_bogus_shard(
    folder: Path,
    weights: str = "diffusion_pytorch_model.safetensors",
    value: float = 0.125,
    shard: str = SHARD,
    index: str = INDEX,
) -> None:
    """Put a `*.safetensors.index.json` and one shard (every tensor = `value`) beside `weights`: diffusers
    prefers an index over the single file, so an unguarded load reads the shard."""
    import torch
    from safetensors.torch import load_file, save_file

    sd = load_file(str(folder / weights))
    save_file({k: torch.full_like(v, value) for k, v in sd.items()}, str(folder / shard))
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(sd, shard)}))


def flip_byte(path: Path, *, keep_times: bool = False, offset: int | None = None) -> None:
    """Flip one byte in place (same size); `keep_times` puts the old atime/mtime back, as `touch -r` would."""
    st = path.stat()
    with open(path, "r+b") as f:
        pos = st.st_size // 2 if offset is None else offset
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0xFF]))
    if keep_times:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
