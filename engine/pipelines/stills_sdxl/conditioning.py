"""What each identity method feeds diffusers, built from the characters' stored identities.

- FaceID-Plus-v2 (h94): the ArcFace **normed** embedding of the buffalo_l pack as `ip_adapter_image_embeds`
  (`(2B, N, 512)`, zeros for the unconditional half), and CLIP ViT-H hidden states (penultimate layer) of each
  identity's 224 px ArcFace-aligned face crop set on the projection layer (`clip_embeds`, the unconditional half
  from an all-zero image, as diffusers' own `encode_image` does), with `shortcut=True` (v2) and
  `shortcut_scale` = the structure scale.
- InstantID: the antelopev2 ArcFace **raw** embedding (not normalised) as `ip_adapter_image_embeds` of shape
  `(2B, N, 1, 512)` (a Plus-type projection needs the sequence axis), the same tokens' projection handed to
  IdentityNet (`face_tokens`, all identities' 16 tokens concatenated), and the keypoint image with every face at
  its place.

Several identities (up to 4) share one adapter: N embeddings, N region masks (`ip_adapter_masks`), and per-image
scales `[[s] * N]`; outside its mask an identity adds exactly nothing at the adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.identity.layout import Region


@dataclass(frozen=True)
class IdentityInput:
    """One character's identity, as the stills pipelines consume it (built by the Engine from the character).

    `embedding` is the character's merged vector for the method's encoder (unit length for ArcFace: FaceID's
    `normed_embedding`); InstantID takes the raw scale, `embedding * raw_norm`, where `raw_norm` is the mean norm of
    the character's per-reference raw embeddings.
    """

    character_id: str
    version: int
    name: str
    encoder_id: str
    model_sha256: str
    embedding: np.ndarray
    raw_norm: float = 1.0
    face_crop: np.ndarray | None = None  # (224, 224, 3) uint8 RGB ArcFace-aligned crop (FaceID-Plus structure)
    kps_unit: np.ndarray | None = None  # (5, 2) reference face points in the aligned unit frame (InstantID)
    reference: str = ""  # which reference photo the crop / points come from

    def record(self) -> dict:
        """What output metadata records about this identity."""
        return {
            "id": self.character_id,
            "version": self.version,
            "name": self.name,
            "encoder_id": self.encoder_id,
            "model_sha256": self.model_sha256,
            "reference": self.reference,
        }


@dataclass
class MethodInputs:
    """The diffusers call arguments of one identity render, plus state to set on modules before the call."""

    pipeline_kwargs: dict = field(default_factory=dict)
    clip_embeds: object | None = None  # FaceID-Plus: tensor for the projection layer
    face_tokens: object | None = None  # InstantID: tensor for IdentityNet
    keypoint_image: np.ndarray | None = None


def _torch_device_dtype(loaded):
    """The compute device and the UNet's dtype (read once: `ModelMixin.dtype` walks every parameter)."""
    import torch

    if "unet_dtype" not in loaded.extras:
        loaded.extras["unet_dtype"] = loaded.pipe.unet.dtype
    return torch.device(loaded.plan.device), loaded.extras["unet_dtype"]


def region_mask_tensor(regions: Sequence[Region], width: int, height: int):
    """`ip_adapter_masks` for one adapter with N identities: a list holding one (1, N, H, W) tensor."""
    import torch
    from diffusers.image_processor import IPAdapterMaskProcessor
    from PIL import Image

    from engine.identity.layout import region_masks

    masks = region_masks(regions, width, height)
    pil = [Image.fromarray((m * 255).astype(np.uint8), mode="L") for m in masks]
    processed = IPAdapterMaskProcessor().preprocess(pil, height=height, width=width)  # (N, 1, H, W)
    return [torch.as_tensor(processed).reshape(1, len(regions), height, width)]


def clip_hidden_states(loaded, crops: Sequence[np.ndarray]):
    """(cond, uncond) CLIP ViT-H penultimate hidden states, each (N, seq, dim): the crops and an all-zero image."""
    import torch

    encoder = loaded.extras["image_encoder"]
    processor = loaded.extras["image_processor"]
    pixels = processor(images=list(crops), return_tensors="pt").pixel_values
    device = next(encoder.parameters()).device
    pixels = pixels.to(device=device, dtype=encoder.dtype)
    with torch.inference_mode():
        cond = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        uncond = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
    return cond, uncond


def faceid_inputs(loaded, identities: Sequence[IdentityInput], *, cfg: bool) -> MethodInputs:
    """FaceID-Plus-v2 arguments for `identities` (one image each)."""
    import torch

    device, dtype = _torch_device_dtype(loaded)
    crops = []
    for ident in identities:
        if ident.face_crop is None:
            raise ValueError(f"character '{ident.name}' has no face crop for the FaceID-Plus structure input")
        crops.append(ident.face_crop)
    ids = torch.as_tensor(np.stack([i.embedding for i in identities]), dtype=torch.float32)[None]  # (1, N, 512)
    # CLIP states depend only on the crop and the loaded encoder: computed once per identity per warm pipeline
    cache = loaded.extras.setdefault("clip_cache", {})
    key = tuple((i.character_id, i.version, i.reference) for i in identities)
    if key not in cache:
        cache[key] = clip_hidden_states(loaded, crops)
    cond, uncond = cache[key]  # (N, seq, dim)
    clip = cond[None]
    if cfg:
        ids = torch.cat([torch.zeros_like(ids), ids])
        clip = torch.cat([uncond[None], clip])
    return MethodInputs(
        pipeline_kwargs={"ip_adapter_image_embeds": [ids.to(device=device, dtype=dtype)]},
        clip_embeds=clip.to(device=device, dtype=dtype),
    )


def instantid_inputs(
    loaded,
    identities: Sequence[IdentityInput],
    regions: Sequence[Region],
    width: int,
    height: int,
    *,
    cfg: bool,
    yaw: float | None = None,
) -> MethodInputs:
    """InstantID arguments: raw embeddings, face tokens for IdentityNet, and the keypoint image."""
    import torch
    from PIL import Image

    from engine.identity.keypoints import draw_kps, place_in_box, pose_template

    device, dtype = _torch_device_dtype(loaded)
    raw = np.stack([i.embedding * i.raw_norm for i in identities])
    embeds = torch.as_tensor(raw, dtype=torch.float32)[None, :, None, :]  # (1, N, 1, 512)
    if cfg:
        embeds = torch.cat([torch.zeros_like(embeds), embeds])
    embeds = embeds.to(device=device, dtype=dtype)
    proj = loaded.pipe.unet.encoder_hid_proj
    with torch.inference_mode():
        tokens = proj([embeds])[0]  # (2B, N, 16, dim)
    tokens = tokens.flatten(1, 2)  # every identity's tokens for IdentityNet's cross-attention
    faces = []
    for ident, region in zip(identities, regions):
        unit = pose_template(yaw or 0.0) if yaw is not None or ident.kps_unit is None else ident.kps_unit
        faces.append(place_in_box(unit, region.face))
    kps = draw_kps((width, height), faces)
    return MethodInputs(
        pipeline_kwargs={"ip_adapter_image_embeds": [embeds], "image": Image.fromarray(kps)},
        face_tokens=tokens,
        keypoint_image=kps,
    )


__all__ = [
    "IdentityInput",
    "MethodInputs",
    "clip_hidden_states",
    "faceid_inputs",
    "instantid_inputs",
    "region_mask_tensor",
]
