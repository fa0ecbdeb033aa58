"""Tiny Wan video pipelines in the real diffusers folder layouts.

- `wan21_i2v` (`tiny-wan21-i2v`): `WanImageToVideoPipeline` (transformer with 36 input channels,
  `image_dim` + `added_kv_proj_dim` for the CLIP image tokens, `image_encoder`, `image_processor`).
- `wan21_t2v` (`tiny-wan21-t2v`): `WanPipeline` (Wan 2.1 T2V 1.3B layout).
- `wan22_ti2v` (`tiny-wan22-ti2v`): `WanPipeline` with `expand_timesteps=True` and the Wan 2.2 VAE
  (z_dim 48, residual, patch_size 2, 16x spatial compression), as in Wan2.2-TI2V-5B-Diffusers.

Text prompts are padded to 512 tokens by the pipelines (`max_sequence_length`); the I2V attention
processor assumes exactly that many text tokens, so the tiny text encoder keeps 512 positions.
"""

from __future__ import annotations

from pathlib import Path

from ._common import save, seed_all, t5_tokenizer

HEADS, HEAD_DIM = 2, 12
INNER_DIM = HEADS * HEAD_DIM
TEXT_DIM = 32
IMAGE_HIDDEN = 16


def _text_encoder(tokenizer, seed: int):
    from transformers import UMT5Config, UMT5EncoderModel

    seed_all(seed)
    config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return UMT5EncoderModel(config)


def _transformer(seed: int, in_channels: int, out_channels: int, image_dim: int | None = None, *, cls=None, **extra):
    """The tiny Wan transformer every twin uses (`cls`: WanTransformer3DModel or its VACE subclass; `extra`: the
    layout's own config keys, e.g. `vace_layers`, `pos_embed_seq_len`)."""
    from diffusers import WanTransformer3DModel

    seed_all(seed)
    return (cls or WanTransformer3DModel)(
        patch_size=(1, 2, 2),
        num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=image_dim,
        added_kv_proj_dim=INNER_DIM if image_dim else None,
        rope_max_seq_len=1024,
        **extra,
    )


def _image_encoder(seed: int):
    """The tiny CLIP image encoder and the real processor (224 px, CLIP mean/std) of the Wan I2V layouts."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    from .clip_vision import vision_config

    seed_all(seed)
    encoder = CLIPVisionModel(vision_config(hidden=IMAGE_HIDDEN, projection_dim=IMAGE_HIDDEN))
    processor = CLIPImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return encoder, processor


def _vae21(seed: int):
    from diffusers import AutoencoderKLWan

    seed_all(seed)
    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )


def _scheduler(flow_shift: float):
    from diffusers import UniPCMultistepScheduler

    # As shipped with the Wan-AI *-Diffusers repos.
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=flow_shift
    )


def build_wan21_i2v(out_dir: Path, seed: int) -> None:
    from diffusers import WanImageToVideoPipeline

    tokenizer = t5_tokenizer()
    image_encoder, image_processor = _image_encoder(seed + 3)
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=_text_encoder(tokenizer, seed + 2),
        vae=_vae21(seed + 1),
        transformer=_transformer(seed, in_channels=36, out_channels=16, image_dim=IMAGE_HIDDEN),
        scheduler=_scheduler(flow_shift=3.0),
        image_encoder=image_encoder,
        image_processor=image_processor,
    )
    save(pipe, out_dir)


def build_wan21_t2v(out_dir: Path, seed: int) -> None:
    from diffusers import WanPipeline

    tokenizer = t5_tokenizer()
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=_text_encoder(tokenizer, seed + 2),
        vae=_vae21(seed + 1),
        transformer=_transformer(seed, in_channels=16, out_channels=16),
        scheduler=_scheduler(flow_shift=3.0),
    )
    save(pipe, out_dir)


def build_wan22_ti2v(out_dir: Path, seed: int) -> None:
    from diffusers import AutoencoderKLWan, WanPipeline

    tokenizer = t5_tokenizer()
    seed_all(seed + 1)
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=48,
        in_channels=12,
        out_channels=12,
        is_residual=True,
        patch_size=2,
        latents_mean=[0.0] * 48,
        latents_std=[1.0] * 48,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        temperal_downsample=[False, True, True],
    )
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=_text_encoder(tokenizer, seed + 2),
        vae=vae,
        transformer=_transformer(seed, in_channels=48, out_channels=48),
        scheduler=_scheduler(flow_shift=5.0),
        expand_timesteps=True,
    )
    save(pipe, out_dir)
