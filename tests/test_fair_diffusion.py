"""Fair Diffusion: SEGA's thresholded edit terms, its momentum and warm-up, and that it moves the attribute."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_fair.diffusion import Step
from lightning_fair.methods import FairDiffusion, PlainSampling
from lightning_fair.methods.conditions import Prompts
from lightning_fair.methods.fair_diffusion import last_axis_quantile, semantic_guidance

PROMPTS = Prompts(neutral="a photo of a person", classes=["a photo of a woman", "a photo of a man"], attribute="Male")


def test_each_edit_keeps_its_largest_values_per_sample_and_channel() -> None:
    edit_eps = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]).view(2, 1, 1, 2, 2)
    signs = torch.tensor([[1.0], [-1.0]])  # toward edit 0, away from edit 1
    # terms 2 * [1, 2, 3, 4] and -2 * [4, 3, 2, 1]; the median of each |term| is 5: values of 6 and 8 are kept
    combined = semantic_guidance(edit_eps, torch.zeros(1, 1, 2, 2), signs, scale=2.0, threshold=0.5)
    assert combined.flatten().tolist() == [-8.0, -6.0, 6.0, 8.0]
    # the null prediction is subtracted before the threshold
    shifted = semantic_guidance(edit_eps + 1, torch.ones(1, 1, 2, 2), signs, scale=2.0, threshold=0.5)
    assert torch.equal(shifted, combined)


def test_the_quantile_is_torchs_linear_one() -> None:
    values = torch.randn(3, 4, 101, generator=torch.Generator().manual_seed(0))
    for quantile in (0.0, 0.5, 0.95, 0.999):
        torch.testing.assert_close(last_axis_quantile(values, quantile), torch.quantile(values, quantile, dim=-1))


def test_momentum_builds_during_the_warm_up_and_the_edit_starts_after_it(tiny_sd: Path) -> None:
    """With constant predictions (prompt 1, null 0, edits 0.5 and -0.25), SEGA's recursion by hand."""
    method = FairDiffusion(
        str(tiny_sd),
        sampler={"num_inference_steps": 4, "cfg_scale": 7.0},
        prompts=PROMPTS,
        edit_warmup_steps=2,
        edit_guidance_scale=4.0,
        edit_momentum_scale=0.5,
        edit_mom_beta=0.6,
    )
    state = method.init_state(torch.arange(2))
    labels = state.conditions["Male"]
    assert sorted(labels.tolist()) == [0, 1]  # balanced draws

    def constant_eps(x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        assert len(x) == 4 * 2  # one call: prompt, null and the two edits of both samples
        values = torch.tensor([1.0, 0.0, 0.5, -0.25]).repeat_interleave(2)
        return values.view(-1, 1, 1, 1).expand_as(x).clone()

    method.backbone.eps = constant_eps
    x = torch.zeros(2, 4, 8, 8)
    outputs = [method.guided_eps(x, Step(i, torch.tensor(999 - 250 * i), 4), state) for i in range(3)]
    # E = 4 * (sign_0 * 0.5 + sign_1 * -0.25): +3 toward class 0, -3 toward class 1; CFG gives 7
    edit = torch.where(labels == 0, 3.0, -3.0)
    momentum = 0.4 * edit  # step 0: E plus no momentum
    step1 = edit + 0.5 * momentum
    momentum = 0.6 * momentum + 0.4 * step1
    step2 = edit + 0.5 * momentum
    for output in outputs[:2]:
        torch.testing.assert_close(output, torch.full_like(x, 7.0))
    torch.testing.assert_close(outputs[2], 7.0 + step2.view(2, 1, 1, 1).expand_as(x))


def test_without_edit_guidance_it_samples_as_plain(tiny_sd: Path) -> None:
    sampler = {"num_inference_steps": 3, "cfg_scale": 3.0}
    plain = PlainSampling(str(tiny_sd), sampler=sampler, prompts=PROMPTS)
    fair = FairDiffusion(str(tiny_sd), sampler=sampler, prompts=PROMPTS, edit_guidance_scale=0.0, edit_warmup_steps=0)
    with torch.no_grad():
        expected, _ = plain.sample(torch.arange(3))
        images, state = fair.sample(torch.arange(3))
    torch.testing.assert_close(images, expected, atol=1e-4, rtol=0)
    assert set(state.conditions) == {"Male"}


def test_guidance_moves_the_attribute_toward_the_target() -> None:
    """On the shipped text-to-image model: all samples edited toward "man" draw men far more often than plain."""
    from lightning_fair.classifiers import load_classifier

    classifier = load_classifier("synthetic_faces_classifier")
    sampler = {"num_inference_steps": 8, "cfg_scale": 1.0, "eta": 1.0}  # the model card's sampler: no CFG
    shares = {}
    for label, target in (("plain", None), ("fair", [0.0, 1.0])):
        if target is None:
            method = PlainSampling("synthetic_faces_sd", sampler=sampler, prompts=PROMPTS)
        else:
            method = FairDiffusion(
                "synthetic_faces_sd", sampler=sampler, prompts=PROMPTS, target_distribution=target, edit_warmup_steps=2
            )
        with torch.no_grad():
            images, _ = method.sample(torch.arange(32))
            shares[label] = classifier.predict(images)[:, 0].float().mean().item()
    assert shares["plain"] < 0.45
    assert shares["fair"] > shares["plain"] + 0.3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"edit_warmup_steps": 3}, "Option 'edit_warmup_steps' must lie in 0..2"),
        ({"edit_threshold": 1.0}, "Option 'edit_threshold' must lie in [0, 1)"),
        ({"edit_prompts": ["female person"]}, "Option 'edit_prompts' must give one prompt per class"),
    ],
)
def test_bad_options_are_one_line(tiny_sd: Path, options: dict, message: str) -> None:
    arguments = {"sampler": {"num_inference_steps": 3, "cfg_scale": 7.0}, "prompts": PROMPTS, **options}
    arguments["sampler"] = {"num_inference_steps": 3, "cfg_scale": 7.0, **options.get("sampler", {})}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        FairDiffusion(str(tiny_sd), **arguments)


def test_a_pixel_backbone_is_refused(tiny_backbone: Path) -> None:
    with pytest.raises(ValueError, match="FairDiffusion guides a text-to-image backbone"):
        FairDiffusion(str(tiny_backbone), sampler={"cfg_scale": 3.0})
