"""SDXL as a backbone: the folder loads, the plain sampler reproduces StableDiffusionXLPipeline, prompts pack."""

from __future__ import annotations

from pathlib import Path

import torch
from latent_model import NEUTRAL_PROMPT

from lightning_fair.backbones import load_backbone
from lightning_fair.backbones.latent_xl import LatentXLBackbone
from lightning_fair.diffusion import SamplerConfig
from lightning_fair.diffusion.seeding import NOISE_STREAM, per_sample_randn, sample_generators
from lightning_fair.methods import PlainSampling


def test_an_sdxl_folder_loads_with_both_text_encoders(tiny_sdxl: Path) -> None:
    backbone = load_backbone(str(tiny_sdxl))
    assert isinstance(backbone, LatentXLBackbone)
    assert backbone.sample_shape == (4, 8, 8)
    assert backbone.image_shape == (3, 32, 32)
    condition = backbone.prompt_condition([NEUTRAL_PROMPT, "a photo of a man", NEUTRAL_PROMPT])
    assert condition.shape == (3, 32 + 1, 32)  # 32 tokens of both encoders side by side, then the pooled row
    torch.testing.assert_close(condition[0], condition[2])
    pooled = backbone.text_encoder_2(backbone.tokens(["a photo of a man"], backbone.tokenizer_2).input_ids).text_embeds
    torch.testing.assert_close(condition[1, -1, :16], pooled[0])
    assert not condition[1, -1, 16:].any()
    assert not backbone.null_condition(2, "cpu").any()  # force_zeros_for_empty_prompt
    assert backbone.h(torch.randn(2, 4, 8, 8), 500, condition[:2]).shape == (2, 32, 4, 4)


def test_plain_sampling_matches_the_sdxl_pipeline(tiny_sdxl: Path) -> None:
    """The framework's loop gives the images of StableDiffusionXLPipeline for the same latents, scheduler and CFG."""
    from diffusers import StableDiffusionXLPipeline

    method = PlainSampling(str(tiny_sdxl), sampler=SamplerConfig(num_inference_steps=3, cfg_scale=3.0), seed=4)
    images, _ = method.sample(torch.tensor([0, 5]))
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    latents = per_sample_randn(sample_generators(4, torch.tensor([0, 5]), NOISE_STREAM), (4, 8, 8), torch.device("cpu"))
    expected = pipeline(
        [NEUTRAL_PROMPT] * 2, latents=latents, num_inference_steps=3, guidance_scale=3.0, output_type="pt"
    ).images
    torch.testing.assert_close((images + 1) / 2, expected.clamp(0, 1), atol=1e-4, rtol=0)
