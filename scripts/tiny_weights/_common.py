"""Shared bits of the tiny-model builders: seeding, in-memory tokenizers, atomic-free saving.

Tokenizers are built from in-memory vocabularies (no hub download) and saved with
`save_pretrained`, so every tiny component loads with the same `from_pretrained` code path as
the real one.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
# Characters the tiny vocabularies cover; anything else maps to the unknown token.
_CHARS = string.ascii_lowercase + string.digits + string.punctuation


def seed_all(seed: int) -> None:
    """Seed torch before building each model so weights depend only on (builder, seed)."""
    torch.manual_seed(seed)


def clip_tokenizer(model_max_length: int = 77, pad_token: str = CLIP_EOS):
    """A byte-level CLIP BPE tokenizer with a character vocabulary (no merges) and the real special tokens."""
    from transformers import CLIPTokenizer

    pieces = [CLIP_BOS, CLIP_EOS] + list(_CHARS) + [c + "</w>" for c in _CHARS]
    if pad_token not in pieces:
        pieces.append(pad_token)
    vocab = {p: i for i, p in enumerate(pieces)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length, pad_token=pad_token)


def t5_tokenizer(model_max_length: int = 512):
    """A SentencePiece-style (Unigram) T5 tokenizer over single characters with `<pad>`=0, `</s>`=1, `<unk>`=2."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(c, -2.0) for c in _CHARS] + [("\u2581" + c, -1.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def save(obj, out_dir: Path, subfolder: str | None = None) -> None:
    """`save_pretrained` into `out_dir[/subfolder]` with safetensors."""
    target = Path(out_dir) / subfolder if subfolder else Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    try:
        obj.save_pretrained(target, safe_serialization=True)
    except TypeError:  # tokenizers / processors / schedulers have no safe_serialization
        obj.save_pretrained(target)
