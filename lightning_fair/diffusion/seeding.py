"""Per-sample random streams: sample ``i`` of a run depends only on ``(seed, i)`` (and, in training, the epoch)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

NOISE_STREAM = 0
CONDITION_STREAM = 1
TRAINING_STREAM = 2
AUGMENTATION_STREAM = 3
GROUPING_STREAM = 4
FEATURE_STREAM = 5


def seed_of(*keys: int) -> int:
    """A 64-bit seed of the non-negative integers ``keys`` (different keys, unrelated seeds)."""
    state = np.random.SeedSequence([int(key) for key in keys]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


def training_generators(seed: int, epoch: int, indices: Tensor) -> list[torch.Generator]:
    """One CPU generator per sample for a method's random draws (noise, timesteps, ...) in training epoch ``epoch``.

    Sample ``i`` gets the same numbers whatever the batch, the process, the number of processes or an interruption.
    """
    return sample_generators(seed_of(seed, epoch, TRAINING_STREAM), indices, TRAINING_STREAM)


def sample_generators(seed: int, indices: Tensor, stream: int) -> list[torch.Generator]:
    """One CPU generator per sample, seeded from ``(seed, index, stream)``.

    Different streams (initial and step noise, drawn conditions, ...) never share random numbers, and no
    stream depends on which other samples are in the batch, on the rank, the batch size or the device
    (numbers are drawn on the CPU and then moved).
    """
    generators = []
    for index in indices.tolist():
        state = np.random.SeedSequence([seed, int(index), stream]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator()
        generator.manual_seed(int(state[0]) << 32 | int(state[1]))
        generators.append(generator)
    return generators


def per_sample_randn(generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device) -> Tensor:
    """A batch of standard normal tensors of ``shape``, row ``i`` drawn from ``generators[i]``."""
    rows = [torch.randn(shape, generator=generator) for generator in generators]
    return torch.stack(rows).to(device) if rows else torch.empty((0, *shape), device=device)


def per_sample_choice(generators: list[torch.Generator], probabilities: Tensor) -> Tensor:
    """One class per sample drawn from ``probabilities`` (shape ``(C,)``), row ``i`` from ``generators[i]``."""
    weights = probabilities.double().cpu()
    draws = [torch.multinomial(weights, 1, generator=generator).item() for generator in generators]
    return torch.tensor(draws, dtype=torch.long)
