"""Per-sample random streams: sample ``i`` of a run depends only on ``(seed, i)``."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

NOISE_STREAM = 0
CONDITION_STREAM = 1


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
