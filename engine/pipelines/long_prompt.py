"""SDXL prompts longer than CLIP's 77 tokens, encoded in chunks instead of cut.

SDXL's text encoders read 77 tokens (75 of text) and diffusers drops the rest silently: a scene plus two
characters' identity clauses is already longer, so the second character's description would vanish. Here the text is
split at clause boundaries (", "), else between words, into pieces of at most 75 tokens; each piece goes through the
pipeline's own `encode_prompt` (same tokenizers, same penultimate hidden states, same zeroed empty negative); the
pieces' embeddings are joined along the sequence axis (the UNet's cross-attention takes any length), and the pooled
embedding comes from the first piece, as A1111 / compel do. The negative side gets as many pieces (empty ones when
it is shorter). Prompts that fit are left to diffusers unchanged, so they render exactly as before.
"""

from __future__ import annotations

CHUNK_TOKENS = 75  # 77 minus the begin/end tokens


def token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, truncation=False).input_ids)


def needs_chunks(pipe, *texts: str | None) -> bool:
    tok = getattr(pipe, "tokenizer", None)
    if tok is None or not hasattr(pipe, "encode_prompt"):
        return False
    return any(t and token_count(tok, t) > CHUNK_TOKENS for t in texts)


def split_text(tokenizer, text: str, limit: int = CHUNK_TOKENS) -> list[str]:
    """`text` as pieces of at most `limit` tokens, cut between clauses where possible, else between words."""
    pieces: list[str] = []
    current = ""
    for clause in text.split(", "):
        for part in _fit(tokenizer, clause, limit):
            joined = f"{current}, {part}" if current else part
            if current and token_count(tokenizer, joined) > limit:
                pieces.append(current)
                current = part
            else:
                current = joined
    if current:
        pieces.append(current)
    return pieces or [""]


def _fit(tokenizer, clause: str, limit: int) -> list[str]:
    if token_count(tokenizer, clause) <= limit:
        return [clause]
    out, current = [], ""
    for word in clause.split(" "):
        joined = f"{current} {word}" if current else word
        if current and token_count(tokenizer, joined) > limit:
            out.append(current)
            current = word
        else:
            current = joined
    if current:
        out.append(current)
    return out


def chunked_prompt_embeds(pipe, prompt: str, negative_prompt: str | None, *, cfg: bool) -> tuple[dict, int]:
    """Keyword arguments (`prompt_embeds`, `pooled_prompt_embeds` and the negative ones) for an SDXL pipeline call,
    and the number of pieces."""
    import torch

    tok = pipe.tokenizer
    pos = split_text(tok, prompt)
    neg = split_text(tok, negative_prompt) if negative_prompt else []
    n = max(len(pos), len(neg), 1)
    device = pipe._execution_device
    embeds, neg_embeds, pooled, neg_pooled = [], [], None, None
    for i in range(n):
        text = pos[i] if i < len(pos) else ""
        negative = (neg[i] if i < len(neg) else "") if negative_prompt else None
        pe, ne, pp, npp = pipe.encode_prompt(
            text, device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg, negative_prompt=negative
        )
        embeds.append(pe)
        if cfg:
            neg_embeds.append(ne)
        if i == 0:
            pooled, neg_pooled = pp, npp
    out = {"prompt_embeds": torch.cat(embeds, dim=1), "pooled_prompt_embeds": pooled}
    if cfg:
        out["negative_prompt_embeds"] = torch.cat(neg_embeds, dim=1)
        out["negative_pooled_prompt_embeds"] = neg_pooled
    return out, n


__all__ = ["CHUNK_TOKENS", "chunked_prompt_embeds", "needs_chunks", "split_text", "token_count"]
