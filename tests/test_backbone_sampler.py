"""Frozen backbone, per-sample seeding and the reference samplers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_fair.backbones import AdapterInputs, PixelBackbone, load_backbone
from lightning_fair.diffusion import SamplerConfig
from lightning_fair.diffusion.guidance import guided_eps
from lightning_fair.methods import ConditionalSampling, PlainSampling, method_registry
from lightning_fair.pretraining import DiffusionPretraining

FAST = SamplerConfig(num_inference_steps=4)


def test_hooked_call_equals_diffusers_forward(tiny_backbone: Path) -> None:
    backbone = load_backbone(str(tiny_backbone))
    assert isinstance(backbone, PixelBackbone)
    x, t, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 400, 999]), torch.tensor([0, 1, 2])
    expected = backbone.unet(x, t, class_labels=labels).sample
    torch.testing.assert_close(backbone.eps(x, t, labels), expected, rtol=0, atol=0)
    torch.testing.assert_close(backbone(x, 400, labels), backbone.unet(x, 400, class_labels=labels).sample)
    h = backbone.h(x, t, labels)
    assert h.shape == (3, 16, 16, 16)
    seen = []
    unchanged = backbone.eps(x, t, labels, h_edit=lambda hidden: seen.append(hidden) or hidden)
    torch.testing.assert_close(seen[0], h, rtol=0, atol=0)
    torch.testing.assert_close(unchanged, expected, rtol=0, atol=0)
    edited = backbone.eps(x, t, labels, h_edit=lambda hidden: hidden + 1)
    assert not torch.allclose(edited, expected)
    # A mid residual is the same as adding it to h; the hooks are gone after the call.
    residual = AdapterInputs(mid_residual=torch.ones_like(h))
    torch.testing.assert_close(backbone.eps(x, t, labels, adapter=residual), edited, rtol=0, atol=0)
    torch.testing.assert_close(backbone.eps(x, t, labels), expected, rtol=0, atol=0)


def test_time_embedding_adapter_joins_the_call(tiny_backbone: Path) -> None:
    """An addition to the time embedding changes eps exactly as the same addition to the class embedding does."""
    backbone = load_backbone(str(tiny_backbone))
    x, t, labels = torch.randn(2, 3, 32, 32), torch.tensor([10, 700]), torch.tensor([0, 1])
    shift = torch.randn(2, backbone.unet.time_embedding.linear_2.out_features)
    with_adapter = backbone.eps(x, t, labels, adapter=AdapterInputs(time_embedding=shift))
    original = backbone.unet.class_embedding.weight.clone()
    with torch.no_grad():
        backbone.unet.class_embedding.weight[:2] += shift
        expected = backbone.eps(x, t, labels)
        backbone.unet.class_embedding.weight.copy_(original)
    torch.testing.assert_close(with_adapter, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="UNet2DModel, which takes no down-block residuals"):
        backbone.eps(x, t, labels, adapter=AdapterInputs(down_residuals=(x,)))


def test_backbone_is_frozen(tiny_backbone: Path) -> None:
    backbone = load_backbone(str(tiny_backbone))
    backbone.train()
    assert not backbone.training
    assert not any(module.training for module in backbone.modules())
    assert not any(parameter.requires_grad for parameter in backbone.parameters())
    assert (backbone.condition_attribute, backbone.num_classes, backbone.null_label) == ("Male", 2, 2)


def test_missing_backbone_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"No diffusion backbone at '.*nowhere' and no shipped model"):
        load_backbone(str(tmp_path / "nowhere"))


def test_conditional_method_needs_conditional_backbone(tmp_path: Path) -> None:
    folder = tmp_path / "unconditional"
    DiffusionPretraining(output_dir=str(folder), block_out_channels=(8, 16), norm_num_groups=4).export(folder)
    with pytest.raises(ValueError, match="ConditionalSampling needs a backbone conditioned on class labels or text"):
        ConditionalSampling(str(folder), sampler=FAST)
    images, state = PlainSampling(str(folder), sampler=FAST).sample(2)
    assert images.shape == (2, 3, 32, 32)
    assert state.condition is None
    with pytest.raises(ValueError, match="'cfg_scale' guides a conditional model"):
        PlainSampling(str(folder), sampler=SamplerConfig(num_inference_steps=2, cfg_scale=3.0)).sample(2)


@pytest.mark.parametrize("sampler", [FAST, SamplerConfig(num_inference_steps=4, eta=1.0), SamplerConfig("ddpm", 4)])
def test_sample_depends_only_on_seed_and_index(tiny_backbone: Path, sampler: SamplerConfig) -> None:
    method = PlainSampling(str(tiny_backbone), sampler=sampler, seed=7)
    together, _ = method.sample(torch.arange(6))
    # Another split and another order give the same samples (up to the float noise of another batch size).
    alone, _ = method.sample(torch.tensor([4, 2]))
    torch.testing.assert_close(alone, together[[4, 2]], atol=1e-4, rtol=0)
    reversed_order, _ = method.sample(torch.tensor([5, 3, 1, 0]))
    torch.testing.assert_close(reversed_order, together[[5, 3, 1, 0]], atol=1e-4, rtol=0)
    # Every index has its own sample, and every sample is an image, not a constant.
    flat = together.flatten(1)
    distances = torch.cdist(flat, flat) + torch.eye(6) * 1e9
    assert distances.min() > 1.0
    assert flat.std(dim=1).min() > 0.1
    other_seed, _ = PlainSampling(str(tiny_backbone), sampler=sampler, seed=8).sample(torch.tensor([4, 2]))
    assert (other_seed - alone).abs().max() > 0.1


def test_conditions_follow_target_distribution(tiny_backbone: Path) -> None:
    method = ConditionalSampling(str(tiny_backbone), sampler=FAST, target_distribution=[0.2, 0.8])
    state = method.init_state(torch.arange(4000))
    assert abs(state.conditions["Male"].float().mean().item() - 0.8) < 0.02
    again = method.init_state(torch.arange(3990, 4000))
    assert torch.equal(again.condition, state.condition[3990:])
    with pytest.raises(ValueError, match="'target_distribution' has 3 entries; expected 2"):
        ConditionalSampling(str(tiny_backbone), target_distribution=[0.2, 0.3, 0.5])


@pytest.mark.parametrize(("formula", "scale", "weight"), [("imagen", 3.0, 3.0), ("one_plus_w", 2.0, 3.0)])
def test_classifier_free_guidance_in_one_call(tiny_backbone: Path, formula: str, scale: float, weight: float) -> None:
    backbone = load_backbone(str(tiny_backbone))
    x, labels, null = torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), torch.tensor([2, 2])
    conditional, unconditional = backbone(x, 500, labels), backbone(x, 500, null)
    calls = []
    backbone.unet.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    guided = guided_eps(backbone, x, torch.tensor(500), labels, null, scale, formula)
    assert calls == [4]  # both branches in one batched call
    torch.testing.assert_close(guided, unconditional + weight * (conditional - unconditional), atol=1e-5, rtol=0)
    assert torch.equal(guided_eps(backbone, x, torch.tensor(500), labels, null, 1.0, "imagen"), conditional)


def test_registry_lists_methods() -> None:
    registry = method_registry()
    assert registry["plain"] is PlainSampling
    assert registry["conditional"] is ConditionalSampling


def test_sampler_options_are_validated() -> None:
    with pytest.raises(ValueError, match="'scheduler' must be 'ddim' or 'ddpm'"):
        SamplerConfig(scheduler="euler")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'num_inference_steps' must be positive"):
        SamplerConfig(num_inference_steps=0)
