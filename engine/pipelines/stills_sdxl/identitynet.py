"""InstantID's IdentityNet: a diffusers `ControlNetModel` whose cross-attention reads the face tokens, not the text.

The one thing core diffusers lacks for InstantID: `StableDiffusionXLControlNetPipeline` hands the ControlNet the
*text* embeddings as `encoder_hidden_states`, while IdentityNet was trained with the 16 face tokens of each
identity (the IP-Adapter's image projection of the ArcFace embedding; zeros' projection for the unconditional
half). This subclass swaps them in and changes nothing else, so the stock pipeline, its guidance window, offload
and schedulers all apply unchanged.
"""

from __future__ import annotations

import torch
from diffusers import ControlNetModel


class IdentityNet(ControlNetModel):
    """`ControlNetModel` + `face_tokens`: (batch, tokens, dim) used as its `encoder_hidden_states` on every call.

    Set `face_tokens` before a render (a plain tensor attribute, not a buffer, so offload hooks never copy it) and
    clear it after. The batch must match the pipeline's (2x under classifier-free guidance: unconditional first).
    """

    face_tokens: torch.Tensor | None = None

    def forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        tokens = self.face_tokens
        if tokens is None:
            raise RuntimeError("IdentityNet needs face tokens: set `face_tokens` before rendering")
        if tokens.shape[0] == 2 * sample.shape[0]:  # guess mode: the ControlNet sees the conditional half only
            tokens = tokens[sample.shape[0] :]
        elif tokens.shape[0] != sample.shape[0]:
            if sample.shape[0] % tokens.shape[0]:
                raise RuntimeError(f"face tokens for batch {tokens.shape[0]} cannot serve batch {sample.shape[0]}")
            tokens = tokens.repeat_interleave(sample.shape[0] // tokens.shape[0], dim=0)
        tokens = tokens.to(device=sample.device, dtype=self.dtype)
        return super().forward(sample, timestep, tokens, *args, **kwargs)
