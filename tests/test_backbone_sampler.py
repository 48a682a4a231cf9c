"""Frozen backbone, per-sample seeding and the reference samplers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_fair.backbones import FrozenUNet
from lightning_fair.diffusion import SamplerConfig
from lightning_fair.methods import ConditionalSampling, DiffusionPretraining, PlainSampling, method_registry

FAST = SamplerConfig(num_inference_steps=4)


def test_split_call_equals_diffusers_forward(tiny_backbone: Path) -> None:
    backbone = FrozenUNet(str(tiny_backbone))
    x, t, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 400, 999]), torch.tensor([0, 1, 2])
    expected = backbone.unet(x, t, class_labels=labels).sample
    encoding = backbone.encode(x, t, labels)
    assert encoding.h.shape == (3, 16, 16, 16)
    torch.testing.assert_close(backbone.decode(encoding), expected, rtol=0, atol=0)
    torch.testing.assert_close(backbone(x, 400, labels), backbone.unet(x, 400, class_labels=labels).sample)
    edited = backbone.decode(encoding, h=encoding.h + 1)
    assert not torch.allclose(edited, expected)


def test_backbone_is_frozen(tiny_backbone: Path) -> None:
    backbone = FrozenUNet(str(tiny_backbone))
    backbone.train()
    assert not backbone.training
    assert not any(module.training for module in backbone.modules())
    assert not any(parameter.requires_grad for parameter in backbone.parameters())
    assert (backbone.condition_attribute, backbone.num_classes, backbone.null_label) == ("Male", 2, 2)


def test_missing_backbone_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"No diffusion backbone at '.*nowhere' and no shipped model"):
        FrozenUNet(str(tmp_path / "nowhere"))


def test_conditional_method_needs_conditional_backbone(tmp_path: Path) -> None:
    folder = tmp_path / "unconditional"
    DiffusionPretraining(output_dir=str(folder), block_out_channels=(8, 16), norm_num_groups=4).export(folder)
    with pytest.raises(ValueError, match="ConditionalSampling needs a class-conditional backbone"):
        ConditionalSampling(str(folder), sampler=FAST)
    images, state = PlainSampling(str(folder), sampler=FAST).sample(2)
    assert images.shape == (2, 3, 32, 32)
    assert state.class_labels is None


@pytest.mark.parametrize("sampler", [FAST, SamplerConfig(num_inference_steps=4, eta=1.0), SamplerConfig("ddpm", 4)])
def test_sample_depends_only_on_seed_and_index(tiny_backbone: Path, sampler: SamplerConfig) -> None:
    method = PlainSampling(str(tiny_backbone), sampler=sampler, seed=7)
    together, _ = method.sample(torch.arange(6))
    alone, _ = method.sample(torch.tensor([4, 2]))
    torch.testing.assert_close(alone, together[[4, 2]], atol=1e-4, rtol=0)
    other_seed, _ = PlainSampling(str(tiny_backbone), sampler=sampler, seed=8).sample(torch.tensor([4, 2]))
    assert (other_seed - alone).abs().max() > 0.1
    assert together.min() >= -1
    assert together.max() <= 1


def test_conditions_follow_target_distribution(tiny_backbone: Path) -> None:
    method = ConditionalSampling(str(tiny_backbone), sampler=FAST, target_distribution=[0.2, 0.8])
    state = method.init_state(torch.arange(4000))
    assert abs(state.conditions["Male"].float().mean().item() - 0.8) < 0.02
    again = method.init_state(torch.arange(3990, 4000))
    assert torch.equal(again.class_labels, state.class_labels[3990:])
    with pytest.raises(ValueError, match="'target_distribution' has 3 entries; expected 2"):
        ConditionalSampling(str(tiny_backbone), target_distribution=[0.2, 0.3, 0.5])


def test_classifier_free_guidance_in_one_call(tiny_backbone: Path) -> None:
    backbone = FrozenUNet(str(tiny_backbone))
    x, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    conditional, null = backbone(x, 500, labels), backbone(x, 500, torch.tensor([2, 2]))
    guided = backbone.classifier_free_eps(x, 500, labels, guidance_scale=3.0)
    torch.testing.assert_close(guided, null + 3.0 * (conditional - null), atol=1e-5, rtol=0)


def test_registry_lists_methods() -> None:
    registry = method_registry()
    assert registry["plain"] is PlainSampling
    assert registry["conditional"] is ConditionalSampling


def test_sampler_options_are_validated() -> None:
    with pytest.raises(ValueError, match="'scheduler' must be 'ddim' or 'ddpm'"):
        SamplerConfig(scheduler="euler")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'num_inference_steps' must be positive"):
        SamplerConfig(num_inference_steps=0)
