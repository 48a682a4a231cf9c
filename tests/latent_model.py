"""A tiny random Stable Diffusion pipeline folder, written with ``StableDiffusionPipeline.save_pretrained``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

NEUTRAL_PROMPT = "a photo of a person"


def character_tokenizer(folder: Path, max_length: int = 32) -> Path:
    """A ``CLIPTokenizer`` folder whose tokens are single characters (no merges): enough for any lowercase prompt."""
    from transformers import CLIPTokenizer

    characters = "abcdefghijklmnopqrstuvwxyz,.'"
    tokens = ["<|startoftext|>", "<|endoftext|>", *characters, *(f"{c}</w>" for c in characters)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length).save_pretrained(
        folder
    )
    return folder


def tiny_text_encoder(tokenizer: object, projection: bool = False) -> torch.nn.Module:
    """A 2-layer CLIP text encoder of width 16 over ``tokenizer`` (with a 16-wide projection if asked)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=16,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def tiny_vae_and_scheduler(prediction_type: str = "epsilon") -> tuple[torch.nn.Module, object]:
    """A VAE of 32x32 images to 4x8x8 latents and Stable Diffusion's DDIM schedule."""
    from diffusers import AutoencoderKL, DDIMScheduler

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 16),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=4,
        sample_size=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    return vae, scheduler


def write_record(folder: Path) -> Path:
    """The framework's record of a tiny pipeline: text-conditioned, its neutral prompt, 32x32 images."""
    record = {"conditioning": {"kind": "text", "neutral_prompt": NEUTRAL_PROMPT}, "image_size": 32}
    (folder / "lightning_fair.json").write_text(json.dumps(record))
    return folder


def write_tiny_pipeline(folder: Path, prediction_type: str = "epsilon") -> Path:
    """Writes a randomly initialised text-to-image pipeline: 32x32 images, 4x8x8 latents, a 2-layer text encoder."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(character_tokenizer(folder.parent / f"{folder.name}_tokenizer"))
    text_encoder = tiny_text_encoder(tokenizer)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae, scheduler = tiny_vae_and_scheduler(prediction_type)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    return write_record(folder)


def write_tiny_xl_pipeline(folder: Path) -> Path:
    """Writes a randomly initialised SDXL pipeline: two text encoders (16 wide each), SDXL's added conditioning."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(character_tokenizer(folder.parent / f"{folder.name}_tokenizer"))
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,  # the two encoders side by side
        attention_head_dim=4,
        norm_num_groups=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8,  # the pooled embedding and six size numbers
    )
    vae, scheduler = tiny_vae_and_scheduler()
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=tiny_text_encoder(tokenizer),
        text_encoder_2=tiny_text_encoder(tokenizer, projection=True),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipeline.save_pretrained(folder)
    return write_record(folder)


def write_tiny_clip(folder: Path, image_size: int = 24, patch_size: int = 8, projection_dim: int = 12) -> Path:
    """Writes a randomly initialised ``CLIPModel`` with its processor, as ``save_pretrained`` writes them."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(character_tokenizer(folder.parent / f"{folder.name}_tokenizer", 64))
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "image_size": image_size,
            "patch_size": patch_size,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        projection_dim=projection_dim,
    )
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def text_method(name: str, class_path: str, num_samples: int, batch_size: int, **init_args: object) -> dict:
    """A method config on a setup's text-to-image ``backbone`` and ``prompts``, sampling 2 steps per image."""
    arguments = {"backbone": "${backbone}", "prompts": "${prompts}", "sampler": {"num_inference_steps": 2}}
    return {
        "name": name,
        "model": {"class_path": class_path, "init_args": arguments | init_args},
        "data": {"init_args": {"num_samples": num_samples, "batch_size": batch_size}},
        "trainer": {"enable_progress_bar": False},
    }
