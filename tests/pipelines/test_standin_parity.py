"""Stand-In parity: our processors + reference pass against a plain statement of the method, written out here.

The model is the tiny Wan 2.1 T2V twin from the weights store, with the tiny Stand-In checkpoint in the release's
layout (a real torch pickle of `blocks.{i}.self_attn.{q,k,v}_loras.{down,up}.weight`, rank 128, random) as the
store converted it. `plain_standin` below is written from the method's description, not from our code: one joint
attention over [video tokens; reference tokens] per block with an explicit mask (reference queries see reference
keys only) and explicit position ids (video (f, i, j); reference (-1, H + i, W + j)), the reference stream
modulated at timestep 0, the LoRA on the reference rows of q/k/v, cross-attention on the video rows only, and no
cache: everything recomputed from scratch for every call. Its own LayerNorm, RMSNorm, complex-number RoPE, softmax
attention and unpatchify; it reads the model's weights, nothing else.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

PRESET = "tiny-video-wan21-t2v-14b-standin"
PARITY = 1e-5


@pytest.fixture(scope="module")
def model(load_tiny):
    loaded = load_tiny(PRESET)
    return loaded.pipe.transformer, loaded.extras["reference"]["transformer"]


def _sinusoid(t: float, dim: int) -> torch.Tensor:
    """Wan's timestep features: [cos, sin] of t * 10000^(-k/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    arg = torch.tensor([float(t)])[:, None] * freqs[None]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)


def _time(tr, t: float):
    """(temb (1, D), modulation (1, 6, D)) at timestep t from the model's time MLPs."""
    ce = tr.condition_embedder
    e = _sinusoid(t, tr.config.freq_dim)
    temb = F.linear(F.silu(F.linear(e, ce.time_embedder.linear_1.weight, ce.time_embedder.linear_1.bias)),
                    ce.time_embedder.linear_2.weight, ce.time_embedder.linear_2.bias)  # fmt: skip
    proj = F.linear(F.silu(temb), ce.time_proj.weight, ce.time_proj.bias)
    return temb, proj.view(1, 6, -1)


def _rms(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _ln(x, eps=1e-6, weight=None, bias=None):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def _rope(x, angles):
    """x (B, L, heads, d): rotate each pair (x[2k], x[2k+1]) by angles[:, k], as complex numbers."""
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
    rot = torch.polar(torch.ones_like(angles), angles)[None, :, None, :]
    return torch.view_as_real(xc * rot).flatten(-2).to(x.dtype)


def _angles(tr, pos: torch.Tensor) -> torch.Tensor:
    """(L, d/2) rotary angles for position ids (L, 3): the head dim split into frame / row / column parts."""
    d = tr.config.attention_head_dim
    hw = 2 * (d // 6)
    parts = []
    for dim, p in ((d - 2 * hw, pos[:, 0]), (hw, pos[:, 1]), (hw, pos[:, 2])):
        inv = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        parts.append(p.double()[:, None] * inv[None])
    return torch.cat(parts, dim=-1)


def _attention(q, k, v, allowed=None):
    """softmax(q k^T / sqrt(d) + mask) v per head; q/k/v (B, L, heads, d)."""
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.double()).to(q.dtype).flatten(2)


def plain_standin(tr, lora, latents, t, text, ref, *, ref_t=0.0, ref_origin=False, ref_cross=False, mask=True):
    """Stand-In as the paper states it, for one transformer call (see the module docstring).

    Negative controls: `ref_t` the reference's timestep, `ref_origin` the reference at positions (0, i, j) instead
    of (-1, H + i, W + j), `ref_cross` cross-attention on the reference too, `mask=False` reference queries seeing
    video keys.
    """
    cfg = tr.config
    heads = cfg.num_attention_heads
    b = latents.shape[0]
    pe = tr.patch_embedding
    xv = F.conv3d(latents, pe.weight, pe.bias, stride=tuple(cfg.patch_size))
    grid_f, grid_h, grid_w = xv.shape[2:]
    xv = xv.flatten(2).transpose(1, 2)
    xr = F.conv3d(ref, pe.weight, pe.bias, stride=tuple(cfg.patch_size))
    rh, rw = xr.shape[3:]
    xr = xr.flatten(2).transpose(1, 2).expand(b, -1, -1)
    lv, lr = xv.shape[1], xr.shape[1]

    f, i, j = torch.meshgrid(torch.arange(grid_f), torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    video_pos = torch.stack([f, i, j], -1).reshape(-1, 3)
    ri, rj = torch.meshgrid(torch.arange(rh), torch.arange(rw), indexing="ij")
    if ref_origin:
        ref_pos = torch.stack([torch.zeros_like(ri), ri, rj], -1).reshape(-1, 3)
    else:
        ref_pos = torch.stack([torch.full_like(ri, -1), grid_h + ri, grid_w + rj], -1).reshape(-1, 3)
    angles = _angles(tr, torch.cat([video_pos, ref_pos]))
    allowed = torch.ones(lv + lr, lv + lr, dtype=torch.bool)
    if mask:
        allowed[lv:, :lv] = False  # reference queries never see video keys

    temb_v, mod_v = _time(tr, t)
    _, mod_r = _time(tr, ref_t)
    te = tr.condition_embedder.text_embedder
    ctx = F.linear(F.gelu(F.linear(text, te.linear_1.weight, te.linear_1.bias), approximate="tanh"),
                   te.linear_2.weight, te.linear_2.bias)  # fmt: skip

    def heads_of(x):
        return x.unflatten(-1, (heads, -1))

    for n, blk in enumerate(tr.blocks):
        mv = (blk.scale_shift_table + mod_v).chunk(6, dim=1)
        mr = (blk.scale_shift_table + mod_r).chunk(6, dim=1)
        h = torch.cat([_ln(xv) * (1 + mv[1]) + mv[0], _ln(xr) * (1 + mr[1]) + mr[0]], dim=1)
        a1 = blk.attn1
        qkv = []
        for proj, lin in (("q", a1.to_q), ("k", a1.to_k), ("v", a1.to_v)):
            y = F.linear(h, lin.weight, lin.bias)
            down, up = lora.lora[n][proj]
            delta = (h[:, lv:] @ down.T) @ up.T  # the LoRA acts on reference tokens only
            qkv.append(torch.cat([y[:, :lv], y[:, lv:] + delta], dim=1))
        q = _rope(heads_of(_rms(qkv[0], a1.norm_q.weight)), angles)
        k = _rope(heads_of(_rms(qkv[1], a1.norm_k.weight)), angles)
        o = _attention(q, k, heads_of(qkv[2]), allowed)
        o = F.linear(o, a1.to_out[0].weight, a1.to_out[0].bias)
        xv = xv + o[:, :lv] * mv[2]
        xr = xr + o[:, lv:] * mr[2]

        a2 = blk.attn2

        def cross(x, a2=a2, blk=blk):
            n2 = _ln(x, weight=blk.norm2.weight, bias=blk.norm2.bias)
            qc = heads_of(_rms(F.linear(n2, a2.to_q.weight, a2.to_q.bias), a2.norm_q.weight))
            kc = heads_of(_rms(F.linear(ctx, a2.to_k.weight, a2.to_k.bias), a2.norm_k.weight))
            vc = heads_of(F.linear(ctx, a2.to_v.weight, a2.to_v.bias))
            return F.linear(_attention(qc, kc, vc), a2.to_out[0].weight, a2.to_out[0].bias)

        xv = xv + cross(xv)
        if ref_cross:
            xr = xr + cross(xr)

        def ffn(x, m, blk=blk):
            net = blk.ffn.net
            y = F.gelu(F.linear(_ln(x) * (1 + m[4]) + m[3], net[0].proj.weight, net[0].proj.bias), approximate="tanh")
            return F.linear(y, net[2].weight, net[2].bias) * m[5]

        xv = xv + ffn(xv, mv)
        xr = xr + ffn(xr, mr)

    shift, scale = (tr.scale_shift_table + temb_v[:, None]).chunk(2, dim=1)
    out = F.linear(_ln(xv) * (1 + scale) + shift, tr.proj_out.weight, tr.proj_out.bias)
    p_t, p_h, p_w = cfg.patch_size
    out = out.reshape(b, grid_f, grid_h, grid_w, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return out.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def _inputs(seed, batch=1):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 16, 3, 16, 16, generator=g)  # post-patch grid 3 x 8 x 8 = 192 video tokens
    text = torch.randn(batch, 7, 32, generator=g)
    return latents, text


@pytest.fixture(scope="module")
def ref():
    return torch.randn(1, 16, 1, 32, 32, generator=torch.Generator().manual_seed(7))  # 16 x 16 = 256 tokens


def _ours(tr, latents, t, text):
    return tr(latents, torch.tensor([t] * latents.shape[0]), text, return_dict=False)[0]


@torch.no_grad()
def test_processor_and_reference_pass_equal_the_plain_statement(model, ref):
    """One reference pass, then four calls from its cache: the first conditional step, a later step (other
    latents, other t), the unconditional branch (other text) and a batch of 2. Each equals the plain statement,
    recomputed from scratch, to 1e-5. Changing the positions, the reference timestep or the cross-attention skip
    in the plain statement moves it away from ours by far more (the negative controls), so the parity test would
    catch any of those mistakes; so would letting reference queries see video keys."""
    from engine.adapters.standin import attach

    tr, lora = model
    handle = attach(tr, lora)
    try:
        handle.prepare(ref, [1.0], (3, 8, 8))
        cases = {
            "first step": (*_inputs(1), 999.0),
            "later step (cached)": (*_inputs(2), 333.0),
            "unconditional branch": (_inputs(2)[0], torch.zeros(1, 7, 32), 333.0),
            "batch of 2": (*_inputs(3, batch=2), 500.0),
        }
        errors = {}
        for name, (latents, text, t) in cases.items():
            ours = _ours(tr, latents, t, text)
            errors[name] = (ours - plain_standin(tr, lora, latents, t, text, ref)).abs().max().item()
        assert max(errors.values()) < PARITY, errors

        latents, text, t = cases["later step (cached)"]
        ours = _ours(tr, latents, t, text)
        controls = {
            "reference at the origin": plain_standin(tr, lora, latents, t, text, ref, ref_origin=True),
            "reference at the step's timestep": plain_standin(tr, lora, latents, t, text, ref, ref_t=t),
            "cross-attention on the reference": plain_standin(tr, lora, latents, t, text, ref, ref_cross=True),
            "reference queries see video": plain_standin(tr, lora, latents, t, text, ref, mask=False),
        }
        deltas = {k: (ours - v).abs().max().item() for k, v in controls.items()}
        assert min(deltas.values()) > 100 * PARITY, deltas
        print(f"\nparity max |diff|: {errors}\nnegative-control deltas: {deltas}")
    finally:
        handle.detach()


@torch.no_grad()
def test_no_reference_token_attends_to_a_video_token(model, ref, monkeypatch):
    """Every attention of the reference pass has only reference tokens as keys (the pass runs before any video
    exists and takes none as input), and in the video pass only video queries meet the reference keys."""
    import engine.processors.attention_wan as aw
    from engine.adapters.standin import attach

    calls = []
    real = aw._dispatch

    def record(q, k, v, **kw):
        calls.append((q.shape[1], k.shape[1]))
        return real(q, k, v, **kw)

    monkeypatch.setattr(aw, "_dispatch", record)
    tr, lora = model
    handle = attach(tr, lora)
    try:
        handle.prepare(ref, [1.0], (3, 8, 8))
        ref_tokens = 256
        assert calls and all(c == (ref_tokens, ref_tokens) for c in calls), calls
        calls.clear()
        latents, text = _inputs(4)
        _ours(tr, latents, 700.0, text)
        assert calls == [(192, 192 + ref_tokens)] * len(tr.blocks)
    finally:
        handle.detach()


@torch.no_grad()
def test_the_cache_depends_on_the_resolution_and_expert_only(model, ref):
    """The reference K/V depend on the video's rows and columns (the positions start past them) but not on its
    frame count, text or step: they are computed once per (reference, resolution, expert)."""
    from engine.processors.attention_wan import compute_reference_kv

    tr, lora = model
    a = compute_reference_kv(tr, ref, (3, 8, 8), lora.lora)
    b = compute_reference_kv(tr, ref, (21, 8, 8), lora.lora)
    c = compute_reference_kv(tr, ref, (3, 8, 12), lora.lora)
    assert all(torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1]) for i in a)
    assert not torch.equal(a[0][0], c[0][0])
    assert torch.equal(a[0][1], c[0][1])  # values carry no position: RoPE turns queries and keys only


@torch.no_grad()
def test_strength_zero_equals_stock_exactly_and_detach_restores_the_model(model, ref):
    """Strength 0 runs the stock processor on every call: bit for bit the plain transformer. After detach the
    transformer's parameters, buffers and processors are the very objects and values they were before."""
    from engine.adapters.standin import attach

    tr, lora = model
    latents, text = _inputs(5)
    before_state = {k: v.clone() for k, v in tr.state_dict().items()}
    before_procs = tr.attn_processors
    stock = _ours(tr, latents, 400.0, text)

    handle = attach(tr, lora, strength=0.0)
    handle.prepare(ref, [1.0], (3, 8, 8))
    assert torch.equal(_ours(tr, latents, 400.0, text), stock)
    handle.detach()

    handle = attach(tr, lora, strength=1.0)
    handle.prepare(ref, [1.0], (3, 8, 8))
    assert not torch.equal(_ours(tr, latents, 400.0, text), stock)
    handle.detach()
    handle.detach()  # twice is harmless

    after = tr.state_dict()
    assert after.keys() == before_state.keys() and all(torch.equal(after[k], before_state[k]) for k in after)
    assert tr.attn_processors == before_procs  # the same processor objects, in the same places
    assert torch.equal(_ours(tr, latents, 400.0, text), stock)


@torch.no_grad()
def test_weights_are_a_log_bias_on_the_reference_keys(model, ref):
    """A reference at weight w weighs its keys' softmax mass by w: the same photo twice at 0.5 + 0.5 equals it once
    at 1, and strength multiplies the weights (strength 0.5 at weight 1 = strength 1 at weight 0.5)."""
    from engine.adapters.standin import attach

    tr, lora = model
    latents, text = _inputs(6)

    def run(refs, weights, strength):
        h = attach(tr, lora, strength=strength)
        try:
            h.prepare(refs, weights, (3, 8, 8))
            return _ours(tr, latents, 600.0, text)
        finally:
            h.detach()

    once = run(ref, [1.0], 1.0)
    twice_half = run(torch.cat([ref, ref]), [0.5, 0.5], 1.0)
    assert (once - twice_half).abs().max().item() < PARITY
    assert (run(ref, [1.0], 0.5) - run(ref, [0.5], 1.0)).abs().max().item() < PARITY
    assert (run(ref, [0.5], 1.0) - once).abs().max().item() > 100 * PARITY


@torch.no_grad()
def test_blocks_and_step_window_switch_the_reference(model, ref):
    """Blocks not chosen and steps outside the window run stock; the chosen ones see the reference."""
    from engine.adapters.standin import attach

    tr, lora = model
    latents, text = _inputs(8)
    stock = _ours(tr, latents, 800.0, text)
    h = attach(tr, lora, blocks=[1], window=(0.5, 1.0))
    try:
        h.prepare(ref, [1.0], (3, 8, 8))
        assert sorted(h.state.kv) == [1]
        h.set_step(0, 4)
        assert torch.equal(_ours(tr, latents, 800.0, text), stock)
        h.set_step(2, 4)
        only_block_1 = _ours(tr, latents, 800.0, text)
        assert not torch.equal(only_block_1, stock)
    finally:
        h.detach()
    full = attach(tr, lora)
    try:
        full.prepare(ref, [1.0], (3, 8, 8))
        assert (full_out := _ours(tr, latents, 800.0, text)) is not None
        assert not torch.equal(full_out, only_block_1)
    finally:
        full.detach()


def test_attach_refuses_what_does_not_fit(model):
    """No weights without `experimental`, a checkpoint of another size, a second attach: one line each."""
    from engine._core.errors import InputError
    from engine.adapters.standin import StandInWeights, attach

    tr, lora = model
    with pytest.raises(InputError, match="experimental=True") as e:
        attach(tr, None)
    assert "\n" not in str(e.value)
    wide = StandInWeights(lora={0: lora.lora[0]}, rank=128, dim=24, name="one-block")
    with pytest.raises(InputError, match="trained for another Wan model"):
        attach(tr, wide)
    h = attach(tr, lora)
    try:
        with pytest.raises(InputError, match="already attached"):
            attach(tr, lora)
    finally:
        h.detach()
    for bad in ({"strength": 1.5}, {"blocks": [7]}, {"window": (0.6, 0.4)}):
        with pytest.raises(InputError):
            attach(tr, lora, **bad)


@torch.no_grad()
def test_a_backend_without_masks_is_named_when_a_weight_needs_one(model, ref, monkeypatch):
    """Weights below 1 need the logit bias (an additive mask); a backend that refuses masks (flash-attn raises
    "`attn_mask` is not supported") becomes one line naming the fix. Weight 1 needs no mask and runs."""
    import engine.processors.attention_wan as aw
    from engine._core.errors import InputError
    from engine.adapters.standin import attach

    real = aw._dispatch

    def flash_like(q, k, v, attn_mask=None, **kw):
        if attn_mask is not None:
            raise ValueError("`attn_mask` is not supported for flash-attn 2.")
        return real(q, k, v, attn_mask=None, **kw)

    monkeypatch.setattr(aw, "_dispatch", flash_like)
    tr, lora = model
    latents, text = _inputs(9)
    for weight, ok in ((1.0, True), (0.5, False)):
        h = attach(tr, lora)
        try:
            h.prepare(ref, [weight], (3, 8, 8))
            if ok:
                _ours(tr, latents, 300.0, text)
            else:
                with pytest.raises(InputError, match="cannot take: use the native backend") as e:
                    _ours(tr, latents, 300.0, text)
                assert "\n" not in str(e.value)
        finally:
            h.detach()


def test_vace_keeps_its_hint_blocks_and_cross_attention_stock(load_tiny):
    """On a VACE transformer only `blocks.{i}.attn1` change; `attn2` and every `vace_blocks` processor stay."""
    from engine.adapters.standin import attach

    loaded = load_tiny("tiny-video-wan21-vace-14b-standin")
    tr = loaded.pipe.transformer
    before = tr.attn_processors
    h = attach(tr, loaded.extras["reference"]["transformer"])
    try:
        during = tr.attn_processors
        changed = sorted(k for k in before if during[k] is not before[k])
        assert changed == ["blocks.0.attn1.processor", "blocks.1.attn1.processor"]
        assert any(k.startswith("vace_blocks.") for k in before)
    finally:
        h.detach()
    assert tr.attn_processors == before
