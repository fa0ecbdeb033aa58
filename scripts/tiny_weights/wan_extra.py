"""Tiny twins of the other Wan layouts the video presets use, in the real diffusers folder layouts.

- `wan21_vace` (`tiny-wan21-vace`): `WanVACEPipeline` with a `WanVACETransformer3DModel` (VACE blocks on layers 0
  and 1 of 2, `vace_in_channels` 96 as in Wan2.1-VACE-14B-diffusers): continuation from conditioning frames + mask.
- `wan21_flf2v` (`tiny-wan21-flf2v`): `WanImageToVideoPipeline` for first + last frame, the transformer seeing both
  frames' CLIP tokens as one sequence (`pos_embed_seq_len` = 2 x 257), as Wan2.1-FLF2V-14B-720P-diffusers.
- `wan22_i2v_a14b` (`tiny-wan22-i2v-a14b`): `WanImageToVideoPipeline` with two experts (`transformer` for high
  noise, `transformer_2` for low noise, `boundary_ratio` 0.9) and no CLIP image encoder, as Wan2.2-I2V-A14B.
"""

from __future__ import annotations

from pathlib import Path

from ._common import save, t5_tokenizer
from .wan import IMAGE_HIDDEN, _image_encoder, _scheduler, _text_encoder, _transformer, _vae21


def build_wan21_vace(out_dir: Path, seed: int) -> None:
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    tokenizer = t5_tokenizer()
    transformer = _transformer(
        seed, in_channels=16, out_channels=16, cls=WanVACETransformer3DModel, vace_layers=[0, 1], vace_in_channels=96
    )
    pipe = WanVACEPipeline(
        tokenizer=tokenizer,
        text_encoder=_text_encoder(tokenizer, seed + 2),
        vae=_vae21(seed + 1),
        transformer=transformer,
        scheduler=_scheduler(flow_shift=3.0),
    )
    save(pipe, out_dir)


def build_wan21_flf2v(out_dir: Path, seed: int) -> None:
    from diffusers import WanImageToVideoPipeline

    tokenizer = t5_tokenizer()
    encoder, processor = _image_encoder(seed + 3)
    tokens = (224 // 14) ** 2 + 1  # the tiny CLIP's tokens per image (257, as ViT-H/14 at 224 px)
    transformer = _transformer(
        seed, in_channels=36, out_channels=16, image_dim=IMAGE_HIDDEN, pos_embed_seq_len=2 * tokens
    )
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=_text_encoder(tokenizer, seed + 2),
        vae=_vae21(seed + 1),
        transformer=transformer,
        scheduler=_scheduler(flow_shift=5.0),
        image_encoder=encoder,
        image_processor=processor,
    )
    save(pipe, out_dir)


def build_wan22_i2v_a14b(out_dir: Path, seed: int) -> None:
    from diffusers import WanImageToVideoPipeline

    tokenizer = t5_tokenizer()
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=_text_encoder(tokenizer, seed + 2),
        vae=_vae21(seed + 1),
        transformer=_transformer(seed, in_channels=36, out_channels=16),
        transformer_2=_transformer(seed + 10, in_channels=36, out_channels=16),
        scheduler=_scheduler(flow_shift=5.0),
        boundary_ratio=0.9,
    )
    save(pipe, out_dir)
