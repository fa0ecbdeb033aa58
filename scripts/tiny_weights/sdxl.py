"""Tiny SDXL base (`tiny-sdxl-base`): the real `StableDiffusionXLPipeline` folder layout with ~1 M-parameter parts.

The shapes that other tiny components must match (IP-Adapter, ControlNet) are exported as
module constants so those builders stay in sync with this one.
"""

from __future__ import annotations

from pathlib import Path

from ._common import clip_tokenizer, save, seed_all

TEXT_HIDDEN = 32  # each text encoder's hidden size
CROSS_ATTENTION_DIM = 2 * TEXT_HIDDEN  # SDXL concatenates both encoders' hidden states
ADDITION_TIME_EMBED_DIM = 8
# 6 add_time_ids (original size, crop, target size) * time embed dim + pooled text_encoder_2 projection.
PROJECTION_CLASS_EMBEDDINGS_INPUT_DIM = 6 * ADDITION_TIME_EMBED_DIM + TEXT_HIDDEN

UNET_CONFIG = {
    "sample_size": 8,  # 64 px / vae scale factor 8
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": ADDITION_TIME_EMBED_DIM,
    "transformer_layers_per_block": (1, 1),
    "projection_class_embeddings_input_dim": PROJECTION_CLASS_EMBEDDINGS_INPUT_DIM,
    "cross_attention_dim": CROSS_ATTENTION_DIM,
    "norm_num_groups": 8,
}

VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (8, 16, 16, 16),  # 4 levels: latents are 8x smaller, like the real SDXL VAE
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.13025,  # SDXL's value
    "force_upcast": False,
}


def _text_config(tokenizer, projection: bool):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=TEXT_HIDDEN if projection else 512,
        hidden_act="gelu",
    )


def build(out_dir: Path, seed: int) -> None:
    """Write a tiny `StableDiffusionXLPipeline` into `out_dir` (deterministic from `seed`)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = clip_tokenizer()
    tokenizer_2 = clip_tokenizer(pad_token="!")  # the real tokenizer_2 pads with "!"
    seed_all(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    seed_all(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    seed_all(seed + 2)
    text_encoder = CLIPTextModel(_text_config(tokenizer, projection=False))
    seed_all(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, projection=True))
    # The real SDXL base scheduler config.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
        interpolation_type="linear",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    save(pipe, out_dir)
