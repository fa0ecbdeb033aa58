"""Stand-In reference attention on diffusers' own `WanTransformer3DModel` (and its VACE, I2V and TI2V variants).

Stand-In (WeChatCV, arXiv 2508.07901) conditions a Wan video on a face image through self-attention alone:

- the reference image's VAE latent is patchified into reference tokens that run through the transformer's own
  blocks at timestep 0 (their own AdaLN modulation), with a rank-128 LoRA added to q/k/v of the reference tokens
  only, no cross-attention, and RoPE positions frame -1, rows H.., columns W.. (diagonally past the post-patch
  video grid F x H x W);
- reference queries attend only to reference keys, so that stream never sees the video, the text or the step:
  its per-block K/V (after `norm_k` and RoPE) are computed once per (reference, resolution, expert) and reused for
  every step and both guidance branches;
- video queries attend to [video keys; reference keys].

Here that is: `compute_reference_kv` (the reference pass: one forward of the transformer itself on the reference
latent, with `WanReferenceStreamAttnProcessor` on every `blocks.{i}.attn1` and `WanSkipAttnProcessor` on every
`attn2`, so every offload / casting hook of the model still applies) and `WanReferenceAttnProcessor` (the video
pass: appends the cached K/V). Attention always goes through diffusers' `dispatch_attention_fn`, so
`set_attention_backend` still applies. The cache is plain tensors in a `ReferenceState`, never module buffers:
group offloading copies a module's tensors when it is applied, so buffers added later would be missing.

Per-reference weights and the strength act as an additive bias `log(strength * weight)` on the logits of that
reference's keys (video keys get 0): a weight `a` multiplies the softmax mass the video gives those keys by `a`
before renormalisation (for whole `a` it equals repeating each key `a` times). All weights 1 is Stand-In exactly
and needs no mask; strength 0 never reaches this code (the stock processor runs), so it is stock bit for bit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from engine._core.errors import InputError

# WanRotaryPosEmbed's theta (diffusers builds it with the default and does not store it).
ROPE_THETA = 10000.0
ATTN1 = re.compile(r"^blocks\.(\d+)\.attn1\.processor$")
ATTN2 = re.compile(r"^blocks\.(\d+)\.attn2\.processor$")

# {block index: {"q" | "k" | "v": (down (r, d), up (d, r))}}: a LoRA on the reference tokens' projections.
Lora = Mapping[int, Mapping[str, tuple[torch.Tensor, torch.Tensor]]]


def _dispatch(*args, **kwargs):
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    return dispatch_attention_fn(*args, **kwargs)


def apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """RoPE on interleaved pairs, exactly as diffusers' `WanAttnProcessor` applies it."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def _projections(attn, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Self-attention q, k, v before the norms (fused or not), as diffusers computes them."""
    if getattr(attn, "fused_projections", False):
        return attn.to_qkv(hidden_states).chunk(3, dim=-1)
    return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)


def _lora(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`up(down(x))` in float32, like Stand-In's `LoRALinearLayer` (fp32 weights, no alpha: scale 1)."""
    down = down.to(device=x.device, dtype=torch.float32)
    up = up.to(device=x.device, dtype=torch.float32)
    return ((x.float() @ down.T) @ up.T).to(x.dtype)


@dataclass
class ReferenceState:
    """The reference K/V of one transformer, shared by its processors: plain tensors, no module buffers.

    `kv[block] = (k, v)`, each (1, L_ref, heads, head_dim), post-`norm_k` and post-RoPE. `key_bias` is the
    (L_ref,) additive logit bias of the reference keys (None: every weight is 1, no mask). `active` is the step
    window's switch.
    """

    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    key_bias: torch.Tensor | None = None
    active: bool = True
    _masks: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)

    def get(self, block: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.kv.get(block) if self.active else None

    def clear(self) -> None:
        self.kv.clear()
        self.key_bias = None
        self._masks.clear()

    def mask(self, video_tokens: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """(1, 1, 1, L_video + L_ref) additive mask: 0 on video keys, `key_bias` on reference keys."""
        if self.key_bias is None:
            return None
        key = (video_tokens, dtype, device)
        if key not in self._masks:
            bias = self.key_bias.to(device=device, dtype=torch.float32)
            full = torch.cat([torch.zeros(video_tokens, device=device), bias])
            self._masks = {key: full.to(dtype).view(1, 1, 1, -1)}  # one size per render: keep only the last
        return self._masks[key]


class WanReferenceAttnProcessor:
    """`blocks.{i}.attn1` with the cached reference K/V appended to the video's keys and values.

    The cache, key bias and step switch live in a shared `ReferenceState`; `stock` is the processor it replaced,
    run unchanged whenever this block has no reference (strength 0, outside the step window), so those calls are
    stock bit for bit. The attention backend is the stock processor's (`set_attention_backend` reaches it here).
    """

    def __init__(self, state: ReferenceState, block: int, stock: Any):
        self.state = state
        self.block = block
        self.stock = stock

    # diffusers' `set_attention_backend` / context parallel set these on every processor: forward them to the
    # stock one, so the backend chosen applies to both paths and survives `detach`.
    @property
    def _attention_backend(self):
        return getattr(self.stock, "_attention_backend", None)

    @_attention_backend.setter
    def _attention_backend(self, value) -> None:
        self.stock._attention_backend = value

    @property
    def _parallel_config(self):
        return getattr(self.stock, "_parallel_config", None)

    @_parallel_config.setter
    def _parallel_config(self, value) -> None:
        self.stock._parallel_config = value

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        ref = self.state.get(self.block)
        if ref is None or encoder_hidden_states is not None:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)
        if self._parallel_config is not None:
            raise InputError("Stand-In reference attention does not support context parallelism: disable it")
        if attention_mask is not None:
            raise InputError("Stand-In reference attention got an attention mask for self-attention: none is expected")
        query, key, value = _projections(attn, hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = apply_rotary_emb(query, *rotary_emb)
            key = apply_rotary_emb(key, *rotary_emb)
        k_ref, v_ref = ref
        batch = query.shape[0]
        key = torch.cat([key, k_ref.to(key.dtype).expand(batch, -1, -1, -1)], dim=1)
        value = torch.cat([value, v_ref.to(value.dtype).expand(batch, -1, -1, -1)], dim=1)
        mask = self.state.mask(hidden_states.shape[1], query.dtype, query.device)
        try:
            out = _dispatch(
                query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False, backend=self._attention_backend
            )
        except ValueError as e:  # e.g. flash-attn: "`attn_mask` is not supported"
            if mask is None or "mask" not in str(e):
                raise
            raise InputError(
                f"reference weights or a strength below 1 add a logit bias, which attention backend "
                f"'{self._attention_backend}' cannot take: use the native backend, or strength 1 with every "
                "reference weight 1 (no mask)"
            ) from None
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


class WanReferenceStreamAttnProcessor:
    """`blocks.{i}.attn1` during the reference pass: LoRA on q/k/v (reference tokens only: this pass has no video),
    the reference's RoPE positions instead of the ones the forward computed for the latent's own grid, attention
    over the reference alone, and the block's K/V captured post-norm, post-RoPE."""

    def __init__(
        self,
        block: int,
        lora: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None,
        rotary: tuple[torch.Tensor, torch.Tensor],
        capture: dict[int, tuple[torch.Tensor, torch.Tensor]],
        backend=None,
    ):
        self.block = block
        self.lora = lora
        self.rotary = rotary
        self.capture = capture
        self._attention_backend = backend
        self._parallel_config = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kw):
        query, key, value = _projections(attn, hidden_states)
        if self.lora is not None:
            query = query + _lora(hidden_states, *self.lora["q"])
            key = key + _lora(hidden_states, *self.lora["k"])
            value = value + _lora(hidden_states, *self.lora["v"])
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        cos, sin = (t.to(query.device) for t in self.rotary)
        query = apply_rotary_emb(query, cos, sin)
        key = apply_rotary_emb(key, cos, sin)
        out = _dispatch(
            query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, backend=self._attention_backend
        )
        self.capture[self.block] = (key, value)
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


class WanSkipAttnProcessor:
    """`blocks.{i}.attn2` during the reference pass: the reference stream has no cross-attention. The block adds
    this output to its residual, and adding zeros leaves it exactly as it was."""

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kw):
        return torch.zeros_like(hidden_states)


def video_grid(transformer, vae_scale_spatial: int, vae_scale_temporal: int, num_frames: int, height: int, width: int):
    """The post-patch token grid (F, H, W) of a video of that size (what the reference positions start past)."""
    p_t, p_h, p_w = transformer.config.patch_size
    frames = (num_frames - 1) // vae_scale_temporal + 1
    return frames // p_t, height // vae_scale_spatial // p_h, width // vae_scale_spatial // p_w


def reference_rotary_emb(rope, grid: Sequence[int], ref_hw: Sequence[int], device=None):
    """(cos, sin), each (1, h*w, 1, head_dim): frame -1, rows H..H+h-1, columns W..W+w-1 for a video grid F x H x W.

    Built with diffusers' `get_1d_rotary_pos_embed` from explicit positions, in the dtype `WanRotaryPosEmbed` uses,
    so a position gives the same numbers as the model's own table.
    """
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    _, big_h, big_w = (int(v) for v in grid)
    h, w = (int(v) for v in ref_hw)
    freqs_dtype = torch.float32 if torch.backends.mps.is_available() else torch.float64
    axes = (
        (rope.t_dim, torch.tensor([-1])),
        (rope.h_dim, torch.arange(big_h, big_h + h)),
        (rope.w_dim, torch.arange(big_w, big_w + w)),
    )
    tables = [
        get_1d_rotary_pos_embed(
            dim, pos, ROPE_THETA, use_real=True, repeat_interleave_real=True, freqs_dtype=freqs_dtype
        )
        for dim, pos in axes
    ]
    out = []
    for i in (0, 1):  # cos, sin
        t, r, c = (tab[i] for tab in tables)
        full = torch.cat(
            [
                t.view(1, 1, 1, -1).expand(1, h, w, -1),
                r.view(1, h, 1, -1).expand(1, h, w, -1),
                c.view(1, 1, w, -1).expand(1, h, w, -1),
            ],
            dim=-1,
        ).reshape(1, h * w, 1, -1)
        out.append(full.to(device) if device is not None else full)
    return out[0], out[1]


def reference_input(transformer, ref_latents: torch.Tensor) -> torch.Tensor:
    """What the patch embedding takes: the latent itself, or for image-to-video transformers (36 input channels)
    the latent + a 4-channel mask of ones + the latent as its own condition: how those models see a given frame."""
    want = transformer.config.in_channels
    z = ref_latents.shape[1]
    if want == z:
        return ref_latents
    if want == 2 * z + 4:
        n, _, f, h, w = ref_latents.shape
        ones = ref_latents.new_ones(n, 4, f, h, w)
        return torch.cat([ref_latents, ones, ref_latents], dim=1)
    raise InputError(
        f"the reference latent has {z} channels, but this transformer takes {want}: encode the reference with the "
        "pipeline's own VAE"
    )


@torch.no_grad()
def compute_reference_kv(
    transformer,
    ref_latents: torch.Tensor,
    video_grid: Sequence[int],
    lora: Lora | None = None,
    *,
    blocks: Sequence[int] | None = None,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The reference pass: per-block reference K/V for one transformer (expert), at one video resolution.

    One forward of the transformer itself on the reference latent at timestep 0 (its own condition embedder gives
    the t=0 AdaLN modulation; norm1 + modulation, attn1, gated residual, norm3 + modulation, FFN are the blocks'
    own code), with two processor swaps for the duration of the call: `attn1` adds the LoRA to q/k/v, uses the
    reference RoPE positions and records K/V; `attn2` adds exactly 0 (no cross-attention). The head's output is
    discarded. Several references run as a batch, each attending only to itself; their K/V are concatenated in
    order along the token axis. VACE transformers' hint branch gets a zero control input at scale 0, so nothing
    is added to the reference stream (Stand-In's VACE mode keeps hints on the video only).

    Args:
        transformer (`WanTransformer3DModel` or a subclass): the expert the cache is for.
        ref_latents (`torch.Tensor`): (N, C, 1, h, w) normalised VAE latents of N prepared references.
        video_grid (`Sequence[int]`): the post-patch video grid (F, H, W), see `video_grid`.
        lora (`Lora`, *optional*): {block: {"q"/"k"/"v": (down, up)}}; None runs the base projections (untrained).
        blocks (`Sequence[int]`, *optional*): keep only these blocks' K/V (the pass still runs every block).

    Returns:
        `dict[int, tuple[Tensor, Tensor]]`: {block: (k, v)}, each (1, N*h*w/(p_h*p_w), heads, head_dim).
    """
    from diffusers.utils.torch_utils import get_module_execution_device

    if ref_latents.ndim != 5 or ref_latents.shape[2] != 1:
        raise InputError(f"reference latents must be (N, C, 1, h, w), got {tuple(ref_latents.shape)}")
    device = get_module_execution_device(transformer)
    dtype = transformer.dtype
    n = ref_latents.shape[0]
    _, p_h, p_w = transformer.config.patch_size
    ref_hw = (ref_latents.shape[3] // p_h, ref_latents.shape[4] // p_w)
    rotary = reference_rotary_emb(transformer.rope, video_grid, ref_hw, device)
    if lora is not None:
        missing = [i for i in range(len(transformer.blocks)) if i not in lora]
        if missing:
            raise InputError(f"the LoRA has no weights for block {missing[0]}: it was made for another transformer")
    capture: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    originals = transformer.attn_processors
    swapped = {}
    for name, proc in originals.items():
        if m := ATTN1.match(name):
            i = int(m.group(1))
            backend = getattr(proc, "_attention_backend", None)
            block_lora = lora[i] if lora is not None else None
            swapped[name] = WanReferenceStreamAttnProcessor(i, block_lora, rotary, capture, backend)
        elif ATTN2.match(name):
            swapped[name] = WanSkipAttnProcessor()
        else:
            swapped[name] = proc
    x = reference_input(transformer, ref_latents).to(device=device, dtype=dtype)
    kwargs: dict[str, Any] = {}
    if hasattr(transformer, "vace_blocks"):
        layers = transformer.config.vace_layers
        kwargs["control_hidden_states"] = x.new_zeros(n, transformer.config.vace_in_channels, *x.shape[2:])
        kwargs["control_hidden_states_scale"] = x.new_zeros(len(layers))
    text = torch.zeros(n, 1, transformer.config.text_dim, device=device, dtype=dtype)
    t0 = torch.zeros(n, device=device, dtype=torch.long)  # Stand-In: timestep_ip = zeros_like(timestep)
    transformer.set_attn_processor(swapped)
    try:
        context = (
            transformer.cache_context("flx-reference") if getattr(transformer, "is_cache_enabled", False) else None
        )
        if context is not None:
            with context:
                transformer(hidden_states=x, timestep=t0, encoder_hidden_states=text, return_dict=False, **kwargs)
        else:
            transformer(hidden_states=x, timestep=t0, encoder_hidden_states=text, return_dict=False, **kwargs)
    finally:
        transformer.set_attn_processor(dict(originals))
    keep = set(range(len(transformer.blocks))) if blocks is None else {int(b) for b in blocks}
    out = {}
    for i in sorted(capture):
        if i in keep:
            k, v = capture[i]
            # (N, L, heads, dim) -> (1, N*L, heads, dim): the references side by side on the token axis
            out[i] = (k.reshape(1, -1, *k.shape[2:]).contiguous(), v.reshape(1, -1, *v.shape[2:]).contiguous())
    return out


def reference_key_bias(tokens_per_reference: int, weights: Sequence[float], strength: float) -> torch.Tensor | None:
    """(N*L,) additive logit bias `log(strength * weight)` per reference key; None when every product is 1."""
    products = [float(strength) * float(w) for w in weights]
    if all(p == 1.0 for p in products):
        return None
    if any(p <= 0.0 for p in products):
        raise InputError("reference weights and strength must be above 0 here (strength 0 skips the reference)")
    return torch.tensor([math.log(p) for p in products], dtype=torch.float32).repeat_interleave(tokens_per_reference)


__all__ = [
    "ROPE_THETA",
    "ReferenceState",
    "WanReferenceAttnProcessor",
    "WanReferenceStreamAttnProcessor",
    "WanSkipAttnProcessor",
    "apply_rotary_emb",
    "compute_reference_kv",
    "reference_input",
    "reference_key_bias",
    "reference_rotary_emb",
    "video_grid",
]
