"""Accuracy per group (e.g. per denoising step) from counts, exact under DDP."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class GroupedAccuracy(Metric):
    """Fraction of correct predictions within each group; ``nan`` for a group without samples.

    Args:
        num_groups: number of groups (e.g. one per denoising step).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_groups: int) -> None:
        super().__init__()
        if num_groups < 1:
            raise ValueError(f"Need num_groups >= 1, got {num_groups}")
        self.num_groups = num_groups
        self.add_state("correct", torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, groups: Tensor) -> None:
        """Adds predicted classes ``(N,)``, true classes ``(N,)`` and the group of each sample ``(N,)``."""
        if not preds.shape == target.shape == groups.shape:
            raise ValueError(
                f"preds, target and groups must have one shape, got {tuple(preds.shape)}, "
                f"{tuple(target.shape)} and {tuple(groups.shape)}"
            )
        groups = groups.long()
        if groups.numel() and (groups.min() < 0 or groups.max() >= self.num_groups):
            raise ValueError(f"Groups must lie in 0..{self.num_groups - 1}")
        self.correct += torch.bincount(groups[preds == target], minlength=self.num_groups)
        self.total += torch.bincount(groups, minlength=self.num_groups)

    def compute(self) -> Tensor:
        """Accuracy of each group, shape ``(num_groups,)``."""
        return self.correct.double().div(self.total.double()).float()
