"""The latent text-to-image backbone: a StableDiffusionPipeline folder behind the same contract as a pixel UNet."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from latent_model import NEUTRAL_PROMPT, write_tiny_pipeline
from lightning import Trainer

from lightning_fair.backbones import AdapterInputs, LatentTextToImageBackbone, load_backbone
from lightning_fair.diffusion import SamplerConfig
from lightning_fair.diffusion.seeding import NOISE_STREAM, per_sample_randn, sample_generators
from lightning_fair.methods import (
    AttributeSwitching,
    ConditionalSampling,
    DistributionGuidance,
    PlainSampling,
    Prompts,
)

CLASSES = Prompts(classes=["a photo of a woman", "a photo of a man"], attribute="Male")


def test_pipeline_folder_loads_as_latent_backbone(tiny_sd: Path) -> None:
    backbone = load_backbone(str(tiny_sd))
    assert isinstance(backbone, LatentTextToImageBackbone)
    assert backbone.is_latent
    assert backbone.conditioning == "text"
    assert (backbone.sample_shape, backbone.image_shape) == ((4, 8, 8), (3, 32, 32))
    assert backbone.neutral_prompt == NEUTRAL_PROMPT
    assert not any(parameter.requires_grad for parameter in backbone.parameters())
    backbone.train()
    assert not any(module.training for module in backbone.modules())


def test_hooked_call_equals_the_unet_and_reads_h(tiny_sd: Path) -> None:
    backbone = load_backbone(str(tiny_sd))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    condition = backbone.prompt_condition(["a photo of a man", ""])
    expected = backbone.unet(x, t, encoder_hidden_states=condition).sample
    torch.testing.assert_close(backbone.eps(x, t, condition), expected, rtol=0, atol=0)
    h = backbone.h(x, t, condition)
    assert h.shape == (2, 32, 4, 4)
    assert not torch.allclose(backbone.eps(x, t, condition, h_edit=lambda hidden: hidden + 1), expected)
    # Down-block residuals go through diffusers' own ControlNet inputs.
    down = tuple(torch.full_like(skip, 0.1) for skip in _skips(backbone, x, t, condition))
    controlnet = backbone.unet(
        x,
        t,
        encoder_hidden_states=condition,
        down_block_additional_residuals=down,
        mid_block_additional_residual=torch.zeros_like(h),
    ).sample
    adapted = backbone.eps(x, t, condition, adapter=AdapterInputs(down_residuals=down))
    torch.testing.assert_close(adapted, controlnet, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(adapted, expected)


def _skips(
    backbone: LatentTextToImageBackbone, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor
) -> list[torch.Tensor]:
    """The skip connections of the down blocks of one call (``conv_in``'s output first)."""
    outputs = [backbone.unet.conv_in(x)]

    def keep(module: torch.nn.Module, inputs: object, output: tuple) -> None:
        outputs.extend(output[1])

    hooks = [block.register_forward_hook(keep) for block in backbone.unet.down_blocks]
    backbone.unet(x, t, encoder_hidden_states=condition)
    for hook in hooks:
        hook.remove()
    return outputs


def test_prompts_are_encoded_once_per_batch_and_truncated_with_a_warning(tiny_sd: Path) -> None:
    backbone = load_backbone(str(tiny_sd))
    rows = []
    backbone.text_encoder.register_forward_hook(lambda module, inputs, output: rows.append(len(inputs[0])))
    embeddings = backbone.prompt_condition(["a man", "a woman", "a man", "a man"])
    assert rows == [2]
    assert embeddings.shape == (4, backbone.tokenizer.model_max_length, 16)
    torch.testing.assert_close(embeddings[0], embeddings[2], rtol=0, atol=0)
    assert not torch.allclose(embeddings[0], embeddings[1])
    long_prompt = "a photo of a person with a very long description"
    with pytest.warns(UserWarning, match=r"has \d+ tokens; the text encoder of .* reads 32: it is truncated"):
        backbone.prompt_condition([long_prompt])


def test_plain_sampling_matches_the_diffusers_pipeline(tiny_sd: Path) -> None:
    """The framework's loop gives the images of StableDiffusionPipeline for the same latents, scheduler and CFG."""
    from diffusers import StableDiffusionPipeline

    sampler = SamplerConfig(num_inference_steps=3, cfg_scale=3.0)
    method = PlainSampling(str(tiny_sd), sampler=sampler, seed=4)
    images, _state = method.sample(torch.tensor([0, 5]))
    assert images.shape == (2, 3, 32, 32)
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd)
    latents = per_sample_randn(sample_generators(4, torch.tensor([0, 5]), NOISE_STREAM), (4, 8, 8), torch.device("cpu"))
    expected = pipeline(
        [NEUTRAL_PROMPT] * 2, latents=latents, num_inference_steps=3, guidance_scale=3.0, output_type="pt"
    ).images
    torch.testing.assert_close((images + 1) / 2, expected.clamp(0, 1), atol=1e-4, rtol=0)


def test_conditional_sampling_draws_prompts(tiny_sd: Path) -> None:
    method = ConditionalSampling(str(tiny_sd), sampler=SamplerConfig(num_inference_steps=2), prompts=CLASSES)
    state = method.init_state(torch.arange(6))
    labels = state.conditions["Male"]
    expected = method.backbone.prompt_condition([CLASSES.classes[k] for k in labels.tolist()])
    torch.testing.assert_close(state.condition, expected, rtol=0, atol=0)
    images, _ = method.sample(3)
    assert images.shape == (3, 3, 32, 32)
    assert images.abs().max() <= 1


def test_conditioning_mismatches_are_named(tiny_sd: Path, tiny_backbone: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"ConditionalSampling conditions on classes: '.*' takes text prompts, so give"
    ):
        ConditionalSampling(str(tiny_sd))
    with pytest.raises(ValueError, match="Option 'prompts' is for text-to-image backbones; '.*' takes class labels"):
        PlainSampling(str(tiny_backbone), prompts=CLASSES)
    broken = tmp_path / "no_vae"
    shutil.copytree(tiny_sd, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ValueError, match=r"'.*no_vae' has no vae/; expected a StableDiffusionPipeline folder"):
        load_backbone(str(broken))
    record = json.loads((tiny_sd / "lightning_fair.json").read_text())
    unrecorded = tmp_path / "no_record"
    shutil.copytree(tiny_sd, unrecorded)
    (unrecorded / "lightning_fair.json").unlink()
    with pytest.raises(ValueError, match="records no neutral prompt: set 'prompts.neutral'"):
        PlainSampling(str(unrecorded)).sample(1)
    assert record["conditioning"]["neutral_prompt"] == NEUTRAL_PROMPT


def test_v_prediction_models_give_eps(tmp_path: Path) -> None:
    """An SD 2.x-style v-prediction model: eps = sqrt(a) v + sqrt(1 - a) x."""
    backbone = load_backbone(str(write_tiny_pipeline(tmp_path / "v", prediction_type="v_prediction")))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    condition = backbone.null_condition(2, "cpu")
    v = backbone.unet(x, t, encoder_hidden_states=condition).sample
    alpha = backbone.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(backbone.eps(x, t, condition), alpha.sqrt() * v + (1 - alpha).sqrt() * x)


def test_distribution_guidance_on_latents(tiny_sd: Path, tiny_classifier: Path, tmp_path: Path) -> None:
    method = DistributionGuidance(
        str(tiny_sd), str(tiny_classifier), {"Male": [0.5, 0.5]}, sampler={"num_inference_steps": 3, "cfg_scale": 2.0}
    )
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    generators = sample_generators(0, torch.arange(3), NOISE_STREAM)
    with torch.no_grad():
        h, t = method.training_features(images, generators)
    assert h.shape == (3, 32, 4, 4)
    assert t.shape == (3,)
    rows = []
    original = method.edit_h
    method.edit_h = lambda hidden, timestep, state: rows.append(len(hidden)) or original(hidden, timestep, state)
    generated, _ = method.sample(2)
    assert generated.shape == (2, 3, 32, 32)
    assert rows == [4, 4]  # both halves of the guided call, at every step but the first
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.strategy.connect(method)
    path = tmp_path / "dg.ckpt"
    trainer.save_checkpoint(path)
    keys = torch.load(path, weights_only=True)["state_dict"].keys()
    assert keys
    assert all(key.startswith("predictors.") for key in keys)
    frozen_bytes = sum(t.numel() * t.element_size() for t in method.backbone.state_dict().values())
    assert os.path.getsize(path) < frozen_bytes / 2


def test_attribute_switching_switches_prompts(tiny_sd: Path) -> None:
    method = AttributeSwitching(str(tiny_sd), sampler={"num_inference_steps": 2}, prompts=CLASSES, search_steps=3)
    with torch.no_grad():
        distances = method.switch_distances(torch.arange(2))
    assert distances.shape == (2, 3)
    assert distances.min() > 0  # the two prompts' chains differ
    method.tau.fill_(500)
    state = method.init_state(torch.arange(4))
    final = method.backbone.prompt_condition([CLASSES.classes[k] for k in state.conditions["Male"].tolist()])
    torch.testing.assert_close(state.final_condition, final, rtol=0, atol=0)


def test_half_precision_unet_keeps_guidance_in_float32(tiny_sd: Path, tiny_classifier: Path) -> None:
    """With the UNet in a half precision (bfloat16 here, float16 on a GPU) h-space guidance and sampling still run."""
    method = DistributionGuidance(
        str(tiny_sd), str(tiny_classifier), {"Male": [0.5, 0.5]}, sampler={"num_inference_steps": 2, "cfg_scale": 2.0}
    )
    method.backbone.unet.to(torch.bfloat16)
    images, _ = method.sample(2)
    assert images.dtype == torch.float32
    assert torch.isfinite(images).all()
    with torch.no_grad():
        h, _ = method.training_features(torch.zeros(2, 3, 32, 32), sample_generators(0, torch.arange(2), NOISE_STREAM))
    assert h.dtype == torch.float32


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sampler_matches_the_pipeline_for_every_prediction_type(tmp_path: Path, prediction_type: str) -> None:
    """An SD 2.x-style v-prediction model samples what diffusers' pipeline samples."""
    from diffusers import StableDiffusionPipeline

    folder = write_tiny_pipeline(tmp_path / "model", prediction_type=prediction_type)
    images, _ = PlainSampling(str(folder), sampler=SamplerConfig(num_inference_steps=3), seed=2).sample(2)
    latents = per_sample_randn(sample_generators(2, torch.arange(2), NOISE_STREAM), (4, 8, 8), torch.device("cpu"))
    pipeline = StableDiffusionPipeline.from_pretrained(folder)
    expected = pipeline(
        [NEUTRAL_PROMPT] * 2, latents=latents, num_inference_steps=3, guidance_scale=1.0, output_type="pt"
    )
    torch.testing.assert_close((images + 1) / 2, expected.images.clamp(0, 1), atol=1e-4, rtol=0)
