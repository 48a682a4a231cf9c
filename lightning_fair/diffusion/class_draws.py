"""Per-sample class draws: independent, or balanced so that every prefix of a run holds the target proportions."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lightning_fair.diffusion.seeding import per_sample_choice, sample_generators, seed_of

_SEQUENCES: dict[tuple, list[int]] = {}


def quota_sequence(probabilities: list[float], length: int, order: list[int]) -> list[int]:
    """Tijdeman's chairman sequence: the first ``n`` terms hold class ``k`` ``n p_k`` times to within one, for every n.

    At term ``n`` the class with the earliest deadline ``(count_k + 1 - 1/(2K-2)) / p_k`` among those not ahead of
    their share (``n p_k - count_k >= 1/(2K-2)``) is chosen, ties by ``order``; then
    ``|n p_k - count_k| <= 1 - 1/(2K-2)`` for all ``n`` and ``k`` (Tijdeman, 1980), ``K`` the classes with ``p_k > 0``.

    Args:
        probabilities: the target distribution.
        length: number of terms.
        order: a permutation of the classes breaking ties (it decides which class comes first).
    """
    active = [k for k, p in enumerate(probabilities) if p > 0]
    if len(active) == 1:
        return [active[0]] * length
    slack = 1.0 / (2 * len(active) - 2)
    rank = {k: position for position, k in enumerate(order)}
    counts = dict.fromkeys(active, 0)
    sequence = []
    for term in range(1, length + 1):
        eligible = [k for k in active if probabilities[k] * term - counts[k] >= slack - 1e-12]
        chosen = min(eligible, key=lambda k: ((counts[k] + 1 - slack) / probabilities[k], rank[k]))
        counts[chosen] += 1
        sequence.append(chosen)
    return sequence


def balanced_choice(seed: int, indices: Tensor, probabilities: Tensor, stream: int) -> Tensor:
    """The class of each sample index: term ``index`` of the quota sequence of ``probabilities``.

    Samples ``0..n-1`` of a run hold each class ``n p_k`` times to within one, whatever ``n``, the batches and the
    number of processes; sample ``i`` depends only on ``(seed, stream, i)`` (the seed orders the classes).
    """
    weights = probabilities.double().cpu()
    weights = (weights / weights.sum()).tolist()
    key = (seed, stream, tuple(round(p, 12) for p in weights))
    needed = int(indices.max()) + 1 if len(indices) else 0
    sequence = _SEQUENCES.get(key, [])
    if len(sequence) < needed:
        order = np.random.default_rng(seed_of(seed, stream)).permutation(len(weights)).tolist()
        sequence = quota_sequence(weights, max(needed, 2 * len(sequence)), order)
        _SEQUENCES[key] = sequence
    return torch.tensor([sequence[index] for index in indices.tolist()], dtype=torch.long)


def draw_classes(seed: int, indices: Tensor, probabilities: Tensor, stream: int, balanced: bool) -> Tensor:
    """One class per sample index from ``probabilities``: balanced (see :func:`balanced_choice`) or independent."""
    if balanced:
        return balanced_choice(seed, indices, probabilities, stream)
    return per_sample_choice(sample_generators(seed, indices, stream), probabilities)
