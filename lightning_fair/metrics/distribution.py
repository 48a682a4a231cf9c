"""Validation of target distributions given in configs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def validate_distribution(
    values: Sequence[float] | Tensor | None, num_classes: int, option: str = "target_distribution"
) -> Tensor:
    """Returns a target distribution as a float64 tensor, uniform when ``values`` is ``None``.

    Raises:
        ValueError: naming ``option`` if the length is not ``num_classes``, a value is negative, or the
            values do not sum to 1.
    """
    if num_classes < 2:
        raise ValueError(f"'{option}' needs at least 2 classes, got {num_classes}")
    if values is None:
        return torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
    distribution = torch.as_tensor(values, dtype=torch.float64).flatten()
    if distribution.numel() != num_classes:
        raise ValueError(f"'{option}' has {distribution.numel()} entries; expected {num_classes} (one per class)")
    if (distribution < 0).any():
        raise ValueError(f"'{option}' has negative entries: {distribution.tolist()}")
    if abs(float(distribution.sum()) - 1.0) > 1e-6:
        raise ValueError(f"'{option}' must sum to 1, got {distribution.tolist()} (sum {float(distribution.sum())})")
    return distribution
