"""Per-sample class draws: balanced draws hold the target proportions in every prefix, for any batching."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_fair.diffusion import SamplerConfig
from lightning_fair.diffusion.class_draws import balanced_choice, draw_classes, quota_sequence
from lightning_fair.methods import ConditionalSampling


@pytest.mark.parametrize(
    "probabilities",
    [[0.5, 0.5], [0.3, 0.7], [0.1, 0.2, 0.3, 0.4], [0.0, 0.25, 0.75], [0.05, 0.05, 0.45, 0.45, 0.0]],
)
def test_every_prefix_of_the_quota_sequence_is_within_one_of_its_share(probabilities: list[float]) -> None:
    classes = len([p for p in probabilities if p > 0])
    bound = 1 - 1 / (2 * classes - 2)
    sequence = torch.tensor(quota_sequence(probabilities, 1000, list(range(len(probabilities)))[::-1]))
    counts = torch.nn.functional.one_hot(sequence, len(probabilities)).cumsum(dim=0).double()
    expected = torch.arange(1, 1001, dtype=torch.float64)[:, None] * torch.tensor(probabilities, dtype=torch.float64)
    assert (counts - expected).abs().max() <= bound + 1e-9
    assert all(probabilities[k] > 0 for k in sequence.tolist())


def test_balanced_draws_are_exact_and_independent_of_batching() -> None:
    target = torch.tensor([0.5, 0.5])
    whole = balanced_choice(0, torch.arange(512), target, stream=1)
    assert torch.bincount(whole).tolist() == [256, 256]
    shuffled = torch.randperm(512, generator=torch.Generator().manual_seed(3))
    parts = [balanced_choice(0, part, target, stream=1) for part in shuffled.split(37)]  # any batches, any order
    assert torch.equal(torch.cat(parts), whole[shuffled])
    three = balanced_choice(7, torch.arange(300), torch.tensor([0.2, 0.3, 0.5]), stream=1)
    assert torch.bincount(three).tolist() == [60, 90, 150]


def test_the_seed_decides_the_order_of_the_classes() -> None:
    firsts = {int(balanced_choice(seed, torch.arange(1), torch.tensor([0.5, 0.5]), stream=1)) for seed in range(16)}
    assert firsts == {0, 1}


def test_independent_draws_are_those_of_each_sample_generator() -> None:
    target = torch.tensor([0.5, 0.5])
    drawn = draw_classes(0, torch.arange(512), target, stream=1, balanced=False)
    assert torch.bincount(drawn).tolist() != [256, 256]  # 512 independent draws are rarely exactly even
    assert torch.equal(draw_classes(0, torch.arange(100, 200), target, 1, balanced=False), drawn[100:200])


def test_conditional_sampling_with_balanced_draws_requests_exactly_the_target(tiny_backbone: Path) -> None:
    sampler = {"num_inference_steps": 2, "condition_draw": "balanced"}
    method = ConditionalSampling(str(tiny_backbone), sampler=sampler, target_distribution=[0.25, 0.75])
    labels = torch.cat([method.init_state(batch).conditions["Male"] for batch in torch.arange(512).split(100)])
    assert torch.bincount(labels).tolist() == [128, 384]


def test_an_unknown_draw_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="Sampler option 'condition_draw' must be 'independent' or 'balanced'"):
        SamplerConfig(condition_draw="stratified")
