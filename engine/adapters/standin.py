"""Stand-In (WeChatCV, arXiv 2508.07901) as a reversible adapter on any diffusers Wan transformer.

Verbs, one handle per transformer (Wan 2.2's two experts get one each, with their own checkpoint and cache):

- `load_standin_weights(path)`: the release's LoRA from the store's converted safetensors (never the pickle);
- `attach(transformer, weights, *, strength, blocks, window, experimental)`: installs `WanReferenceAttnProcessor`
  on the chosen `blocks.{i}.attn1` (the rest, `attn2` and VACE's blocks keep theirs) and returns a `StandIn`;
- `StandIn.prepare(references, weights, grid)`: the reference pass (`compute_reference_kv`), once per
  (reference set, resolution); the K/V stay plain tensors in the handle's `ReferenceState`;
- `StandIn.set_step(step, num_steps)`: the step window (`callback_on_step_end` calls it for the next step);
- `StandIn.detach()`: puts back exactly the processors it replaced; the model is then bit-identical to before
  (attach never touches a parameter or buffer).

Reference images (`prepare_reference_image`) follow Stand-In's preprocessor with our own detector: see its
docstring for what differs. `encode_references` VAE-encodes them with the pipeline's own Wan VAE.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine._core.errors import InputError, WeightsIntegrityError

# The release's keys: blocks.{i}.self_attn.{q,k,v}_loras.{down,up}.weight, rank 128, no alpha (scale 1).
KEY = re.compile(r"^blocks\.(\d+)\.self_attn\.([qkv])_loras\.(down|up)\.weight$")
KEY_PATTERN = KEY.pattern
RANK = 128
REFERENCE_SIZE = 512  # Stand-In's preprocessor output side
CROP_SCALE = 1.5  # square crop side / face box side
BORDER_THRESH = 10  # a box within this many pixels of all four borders: the photo is already a face crop
# Our detector (dlib HOG) boxes span brows to chin; antelopev2's SCRFD boxes, which Stand-In crops from, also
# take in the forehead. The box is grown by these fractions of its side (up, and left/right) to approximate
# that [approximation, not measured against SCRFD: no antelopev2 weights here].
HOG_BOX_GROW_UP = 0.25
HOG_BOX_GROW_SIDES = 0.05
MAX_REFERENCES = 4


@dataclass(frozen=True)
class StandInWeights:
    """One Stand-In checkpoint: {block: {"q"/"k"/"v": (down (r, d), up (d, r))}} plus what it fits."""

    lora: dict[int, dict[str, tuple]]
    rank: int
    dim: int
    name: str = ""

    @property
    def num_blocks(self) -> int:
        return len(self.lora)


def check_state_dict(sd: dict, name: str, fix: str) -> StandInWeights:
    """Validate a release-layout state dict (unknown, missing or misshaped keys are refused) into `StandInWeights`."""
    import torch

    if not isinstance(sd, dict) or not sd:
        raise WeightsIntegrityError(f"Stand-In checkpoint '{name}' holds no tensors: {fix}")
    blocks: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
    for key, value in sd.items():
        m = KEY.match(key) if isinstance(key, str) else None
        if m is None or not isinstance(value, torch.Tensor):
            raise WeightsIntegrityError(
                f"Stand-In checkpoint '{name}' has an unknown entry '{key}' (expected only "
                f"blocks.N.self_attn.{{q,k,v}}_loras.{{down,up}}.weight): {fix}"
            )
        blocks.setdefault(int(m.group(1)), {}).setdefault(m.group(2), {})[m.group(3)] = value
    n = max(blocks) + 1
    for i in range(n):
        for proj in "qkv":
            for part in ("down", "up"):
                if part not in blocks.get(i, {}).get(proj, {}):
                    raise WeightsIntegrityError(
                        f"Stand-In checkpoint '{name}' lacks blocks.{i}.self_attn.{proj}_loras.{part}.weight: {fix}"
                    )
    first = blocks[0]["q"]["down"]
    rank, dim = int(first.shape[0]), int(first.shape[1])
    lora: dict[int, dict[str, tuple]] = {}
    for i in range(n):
        lora[i] = {}
        for proj in "qkv":
            down, up = blocks[i][proj]["down"], blocks[i][proj]["up"]
            if tuple(down.shape) != (rank, dim) or tuple(up.shape) != (dim, rank):
                raise WeightsIntegrityError(
                    f"Stand-In checkpoint '{name}': blocks.{i}.self_attn.{proj}_loras has shapes "
                    f"{tuple(down.shape)} / {tuple(up.shape)}, expected ({rank}, {dim}) / ({dim}, {rank}): {fix}"
                )
            lora[i][proj] = (down, up)
    if rank != RANK:
        raise WeightsIntegrityError(f"Stand-In checkpoint '{name}' has rank {rank}, the release has {RANK}: {fix}")
    return StandInWeights(lora=lora, rank=rank, dim=dim, name=name)


def load_standin_weights(path: str | Path, *, name: str = "", fix: str = "re-fetch it") -> StandInWeights:
    """Read a converted Stand-In checkpoint (safetensors: no code can run while reading it) and validate it.

    Args:
        path (`str` or `Path`): the `.safetensors` the store converted from the release's `.ckpt`.
        name (`str`, *optional*): component id, for messages.
        fix (`str`, *optional*): what the user should do when the file is not a Stand-In checkpoint.
    """
    from safetensors.torch import load_file

    p = Path(path)
    if p.suffix != ".safetensors":
        raise WeightsIntegrityError(
            f"Stand-In weights '{name or p.name}' must be the store's converted .safetensors, not {p.name}: {fix}"
        )
    return check_state_dict(load_file(str(p)), name or p.name, fix)


# ----- reference images -----------------------------------------------------------------------------------------
def _pad_to_square(img: np.ndarray, value: int = 255) -> np.ndarray:
    """White padding to a square, centred (the smaller half first), as Stand-In's `_pad_to_square`."""
    h, w = img.shape[:2]
    if h == w:
        return img
    if h > w:
        a = (h - w) // 2
        return np.pad(img, ((0, 0), (a, h - w - a), (0, 0)), constant_values=value)
    a = (w - h) // 2
    return np.pad(img, ((a, w - h - a), (0, 0), (0, 0)), constant_values=value)


def detector_box_to_scrfd(box: Sequence[float]) -> tuple[float, float, float, float]:
    """A dlib HOG box (brows to chin) grown to about the extent of an SCRFD box (forehead included)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0)
    return x0 - HOG_BOX_GROW_SIDES * side, y0 - HOG_BOX_GROW_UP * side, x1 + HOG_BOX_GROW_SIDES * side, y1


def prepare_reference_image(
    image: np.ndarray,
    face_box: Sequence[float] | None,
    *,
    size: int = REFERENCE_SIZE,
    background_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Stand-In's reference crop: the face square at 1.5x the box side, padded white, `size` x `size` (INTER_AREA).

    Same geometry as Stand-In's `FaceProcessor.process` (integer centre and side, the crop clipped to the photo,
    centred white padding; no face or a box touching all four borders: the whole photo padded to a square).
    What differs, and why:

    - the face box comes from the caller's detector (ours is dlib's HOG, grown with `detector_box_to_scrfd`)
      instead of antelopev2's SCRFD (insightface packs are non-commercial);
    - Stand-In paints the background (BiSeNet label 0) white. We have no face parser; a GrabCut pass tried on the
      test photos cut the hair off 2 of 4 and kept background on another, so the background is kept unless the
      caller passes `background_mask` (True = background, `size` x `size`, e.g. from their own parser), which is
      painted white. Photos with transparency arrive composited on white already (`to_rgb_array`).

    Args:
        image (`np.ndarray`): (H, W, 3) uint8 RGB.
        face_box (`Sequence[float]`, *optional*): (x0, y0, x1, y1) of the largest face, None when none was found.
        size (`int`, defaults to 512): output side.
        background_mask (`np.ndarray`, *optional*): (size, size) bool, True where the background is.

    Returns:
        `np.ndarray`: (size, size, 3) uint8 RGB.
    """
    import cv2

    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError("a reference image must be an (H, W, 3) uint8 RGB array (engine.identity.images.load_image)")
    h, w = image.shape[:2]
    if face_box is None:
        square = _pad_to_square(image)
    else:
        x1, y1, x2, y2 = (int(v) for v in face_box)
        if x1 <= BORDER_THRESH and y1 <= BORDER_THRESH and x2 >= w - BORDER_THRESH and y2 >= h - BORDER_THRESH:
            square = _pad_to_square(image)
        else:
            cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
            half = int(max(x2 - x1, y2 - y1) * CROP_SCALE) // 2
            left, top = max(cx - half, 0), max(cy - half, 0)
            right, bottom = min(cx + half, w), min(cy + half, h)
            if right <= left or bottom <= top:
                raise InputError(f"the face box {tuple(face_box)} lies outside the {w}x{h} photo: detect again")
            square = _pad_to_square(image[top:bottom, left:right])
    out = cv2.resize(np.ascontiguousarray(square), (size, size), interpolation=cv2.INTER_AREA)
    if background_mask is not None:
        mask = np.asarray(background_mask, dtype=bool)
        if mask.shape != (size, size):
            raise InputError(f"background_mask must be {size}x{size} (got {mask.shape})")
        out = out.copy()
        out[mask] = 255
    return out


def encode_references(vae, images: Sequence[np.ndarray]):
    """(N, z, 1, h, w) normalised latents of prepared references, with the pipeline's own Wan VAE.

    As Stand-In's `encode_ip_image`: pixels to [-1, 1], one frame, the posterior mean, then the Wan pipelines'
    normalisation `(z - latents_mean) / latents_std`.
    """
    import torch
    from diffusers.utils.torch_utils import get_module_execution_device

    x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 255.0
    x = (x * 2.0 - 1.0).unsqueeze(2)  # (N, 3, 1, H, W)
    device = get_module_execution_device(vae)
    with torch.no_grad():
        z = vae.encode(x.to(device=device, dtype=vae.dtype)).latent_dist.mode()
    zdim = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, zdim, 1, 1, 1).to(z.device, z.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, zdim, 1, 1, 1).to(z.device, z.dtype)
    return (z - mean) * inv_std


# ----- attach / prepare / detach ---------------------------------------------------------------------------------
def _check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise InputError(f"reference strength must be a number from 0 to 1 (got {strength!r})")
    return float(strength)


def _check_window(window) -> tuple[float, float]:
    try:
        start, end = (float(v) for v in window)
    except (TypeError, ValueError):
        raise InputError(f"the reference step window must be (start, end) fractions (got {window!r})") from None
    if not 0.0 <= start < end <= 1.0:
        raise InputError(f"the reference step window needs 0 <= start < end <= 1 (got {start:g}:{end:g})")
    return start, end


def _check_blocks(blocks, n: int) -> tuple[int, ...]:
    if blocks is None:
        return tuple(range(n))
    out = sorted({int(b) for b in blocks}) if not isinstance(blocks, (str, bytes)) else None
    if not out or any(not 0 <= b < n for b in out):
        raise InputError(f"reference blocks must be block indices from 0 to {n - 1} (got {blocks!r})")
    return tuple(out)


@dataclass
class StandIn:
    """Stand-In attached to one transformer. Created by `attach`; see the module docstring for the verbs."""

    transformer: object
    weights: StandInWeights | None
    strength: float
    blocks: tuple[int, ...]
    window: tuple[float, float]
    experimental: bool
    state: object = None
    replaced: dict = field(default_factory=dict)  # processor name -> the stock processor it replaced

    @property
    def attached(self) -> bool:
        return bool(self.replaced)

    def prepare(self, references, weights: Sequence[float] | None = None, grid: Sequence[int] = (1, 1, 1)) -> None:
        """Compute this expert's reference K/V for `references` at the video grid `grid` (F, H, W post-patch).

        Args:
            references (`torch.Tensor`): (N, C, 1, h, w) latents from `encode_references`, 1 to 4 of them.
            weights (`Sequence[float]`, *optional*): one per reference, each in (0, 1]; defaults to all 1.
            grid (`Sequence[int]`): post-patch video grid (`engine.processors.attention_wan.video_grid`).
        """
        from engine.processors.attention_wan import compute_reference_kv, reference_key_bias

        if not self.attached:
            raise InputError("Stand-In is not attached: call attach() first")
        n = int(references.shape[0])
        if not 1 <= n <= MAX_REFERENCES:
            raise InputError(f"give 1 to {MAX_REFERENCES} reference images (got {n})")
        weights = [1.0] * n if weights is None else [float(w) for w in weights]
        if len(weights) != n or any(not 0.0 < w <= 1.0 for w in weights):
            raise InputError(f"give one weight in (0, 1] per reference image (got {weights!r} for {n})")
        self.state.clear()
        if self.strength == 0.0:  # stock exactly: no reference pass, every processor runs the stock path
            return
        lora = self.weights.lora if self.weights is not None else None
        kv = compute_reference_kv(self.transformer, references, grid, lora, blocks=self.blocks)
        self.state.kv.update(kv)
        tokens = next(iter(kv.values()))[0].shape[1] // n
        self.state.key_bias = reference_key_bias(tokens, weights, self.strength)

    def set_step(self, step: int, num_steps: int) -> None:
        """Switch the reference on for steps with `start <= step / num_steps < end`."""
        start, end = self.window
        self.state.active = start <= step / max(num_steps, 1) < end

    def detach(self) -> None:
        """Put back the processors `attach` replaced and drop the cache (safe to call twice)."""
        if not self.replaced:
            return
        current = self.transformer.attn_processors
        current.update(self.replaced)
        self.transformer.set_attn_processor(current)
        self.replaced = {}
        self.state.clear()


def attach(
    transformer,
    weights: StandInWeights | None,
    *,
    strength: float = 1.0,
    blocks: Sequence[int] | None = None,
    window: Sequence[float] = (0.0, 1.0),
    experimental: bool = False,
) -> StandIn:
    """Install Stand-In's reference attention on a Wan transformer (T2V, VACE, I2V, TI2V).

    Args:
        transformer (`WanTransformer3DModel` or a subclass): the model (one expert of Wan 2.2).
        weights (`StandInWeights`, *optional*): the checkpoint trained for this model; None runs the reference
            stream through the base projections, untrained, and needs `experimental=True`.
        strength (`float`, defaults to 1): 0 = stock exactly; (0, 1] = logit bias `log(strength * weight)` on
            the reference keys (1 = Stand-In as published).
        blocks (`Sequence[int]`, *optional*): blocks whose video queries see the reference; default all.
        window (`Sequence[float]`, defaults to (0, 1)): step fractions [start, end) with the reference on.
        experimental (`bool`, defaults to False): allow running without trained weights.

    Returns:
        `StandIn`: the handle (`prepare`, `set_step`, `detach`).
    """
    from engine.processors.attention_wan import ATTN1, ReferenceState, WanReferenceAttnProcessor

    strength = _check_strength(strength)
    window = _check_window(window)
    model_blocks = getattr(transformer, "blocks", None)
    if model_blocks is None or not hasattr(transformer, "attn_processors") or not hasattr(transformer, "rope"):
        raise InputError(f"Stand-In attaches to a diffusers Wan transformer, not {type(transformer).__name__}")
    n = len(model_blocks)
    blocks = _check_blocks(blocks, n)
    if weights is None and not experimental:
        raise InputError(
            "no Stand-In weights were trained for this model: pass experimental=True to run the reference "
            "attention untrained, or use a preset with trained weights (video-wan21-t2v-14b-standin)"
        )
    if weights is not None:
        dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        if (weights.num_blocks, weights.dim) != (n, dim):
            raise InputError(
                f"Stand-In checkpoint '{weights.name}' has {weights.num_blocks} blocks of width {weights.dim}, but "
                f"this transformer has {n} of width {dim}: it was trained for another Wan model"
            )
    processors = transformer.attn_processors
    if any(isinstance(p, WanReferenceAttnProcessor) for p in processors.values()):
        raise InputError("Stand-In is already attached to this transformer: detach it first")
    state = ReferenceState()
    handle = StandIn(transformer, weights, strength, blocks, window, bool(experimental), state)
    chosen = set(blocks)
    for name, proc in processors.items():
        m = ATTN1.match(name)
        if m and int(m.group(1)) in chosen:
            handle.replaced[name] = proc
            processors[name] = WanReferenceAttnProcessor(state, int(m.group(1)), proc)
    transformer.set_attn_processor(processors)
    return handle


__all__ = [
    "CROP_SCALE",
    "KEY_PATTERN",
    "MAX_REFERENCES",
    "RANK",
    "REFERENCE_SIZE",
    "StandIn",
    "StandInWeights",
    "attach",
    "check_state_dict",
    "detector_box_to_scrfd",
    "encode_references",
    "load_standin_weights",
    "prepare_reference_image",
]
