"""Fairness metrics of generated images, computed from counts of predicted classes.

Every metric keeps only integer counts as state (summed across processes), so the values are exact under
DDP whatever the number of processes. A value that the counts cannot determine (no sample, an empty group, a
gap between groups that do not exist) is ``nan``, never a number that looks measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_fair.metrics.distribution import validate_distribution

Distance = Literal["l2", "l1", "kl"]


class _PredictedClassCounts(Metric):
    """Counts of predicted classes, optionally per group: the shared state of the fairness metrics.

    ``update(preds, groups=None)`` takes class ids ``(N,)`` or class scores ``(N, C)`` (argmax is taken),
    and the group of each sample ``(N,)`` (all in group 0 when omitted).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, num_classes: int, num_groups: int = 1) -> None:
        super().__init__()
        if num_classes < 2 or num_groups < 1:
            raise ValueError(f"Need num_classes >= 2 and num_groups >= 1, got {num_classes} and {num_groups}")
        self.num_classes = num_classes
        self.num_groups = num_groups
        self.add_state("counts", torch.zeros(num_groups, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, groups: Tensor | None = None) -> None:
        """Adds a batch of predictions."""
        if preds.ndim == 2:
            if preds.shape[1] != self.num_classes:
                raise ValueError(
                    f"Class scores must have shape (N, {self.num_classes}), got {tuple(preds.shape)}; "
                    "pass class ids as a 1-D tensor"
                )
            preds = preds.argmax(dim=1)
        preds = preds.long().flatten()
        groups = torch.zeros_like(preds) if groups is None else groups.long().flatten()
        if groups.shape != preds.shape:
            raise ValueError(f"'groups' has shape {tuple(groups.shape)}; expected {tuple(preds.shape)}")
        if preds.numel() and (preds.min() < 0 or preds.max() >= self.num_classes):
            raise ValueError(f"Predicted classes must lie in 0..{self.num_classes - 1}")
        if groups.numel() and (groups.min() < 0 or groups.max() >= self.num_groups):
            raise ValueError(f"Groups must lie in 0..{self.num_groups - 1}")
        flat = torch.bincount(groups * self.num_classes + preds, minlength=self.num_groups * self.num_classes)
        self.counts += flat.view(self.num_groups, self.num_classes)

    def _proportions(self) -> Tensor:
        """Class proportions per group, ``(G, C)`` float64; ``nan`` for an empty group."""
        counts = self.counts.double()
        return counts / counts.sum(dim=1, keepdim=True)

    def _squeeze(self, values: Tensor) -> Tensor:
        values = values.float()
        return values[0] if self.num_groups == 1 else values


class AttributeProportions(_PredictedClassCounts):
    """Fraction of samples predicted in each class: ``(C,)``, or ``(G, C)`` with groups; ``nan`` without samples."""

    def compute(self) -> Tensor:
        """Returns the proportions."""
        return self._squeeze(self._proportions())


class FairnessDiscrepancy(_PredictedClassCounts):
    """Fairness discrepancy (Choi et al., 2020): distance of the predicted-class histogram to a target.

    ``l2`` (the paper's FD) is ``||p_target - p_hat||_2``, ``l1`` the L1 distance, and ``kl`` is
    ``KL(p_hat || p_target)`` with ``0 log 0 = 0`` (infinite if a predicted class has target 0). A class
    that no sample was predicted as counts as 0 in ``p_hat`` (the official code drops such classes). With
    ``num_groups > 1`` (e.g. the classes of a target attribute passed as ``groups``) it returns one value
    per group, ``nan`` for an empty group.

    Args:
        num_classes: classes of the sensitive attribute.
        target_distribution: the fair distribution (uniform by default); length ``num_classes``, sums to 1.
        distance: ``l2``, ``l1`` or ``kl``.
        num_groups: number of groups to compute it separately for.
    """

    def __init__(
        self,
        num_classes: int,
        target_distribution: Sequence[float] | None = None,
        distance: Distance = "l2",
        num_groups: int = 1,
    ) -> None:
        super().__init__(num_classes, num_groups)
        if distance not in ("l2", "l1", "kl"):
            raise ValueError(f"Option 'distance' must be 'l2', 'l1' or 'kl', got {distance!r}")
        self.distance = distance
        self.register_buffer("target_distribution", validate_distribution(target_distribution, num_classes))

    def compute(self) -> Tensor:
        """Returns the discrepancy (scalar, or ``(G,)`` with groups)."""
        observed = self._proportions()
        target = self.target_distribution.to(observed.device)
        if self.distance == "l2":
            values = (observed - target).norm(dim=1)
        elif self.distance == "l1":
            values = (observed - target).abs().sum(dim=1)
        else:
            values = (torch.xlogy(observed, observed) - torch.xlogy(observed, target)).sum(dim=1)
        return self._squeeze(values)  # nan for a group without samples: its proportions are nan


class DemographicParityGap(_PredictedClassCounts):
    """Largest difference, across sensitive groups, of the rate of a target class.

    ``update(preds, groups)`` takes the predicted target attribute as ``preds`` and the (predicted)
    sensitive attribute as ``groups``. The gap is ``max_s P(t = positive | s) - min_s P(t = positive | s)``
    over groups with samples. It is ``nan`` (cannot be measured, which is not the same as no gap) when fewer
    than two groups have samples, or when no sample or every sample is in the positive class (the target then
    does not vary, so its dependence on the group is unknown).

    Args:
        num_target_classes: classes of the target attribute.
        num_sensitive_classes: classes of the sensitive attribute.
        positive_class: the target class whose rate is compared.
    """

    def __init__(self, num_target_classes: int = 2, num_sensitive_classes: int = 2, positive_class: int = 1) -> None:
        super().__init__(num_target_classes, num_sensitive_classes)
        if not 0 <= positive_class < num_target_classes:
            raise ValueError(f"Option 'positive_class' must lie in 0..{num_target_classes - 1}, got {positive_class}")
        self.positive_class = positive_class

    def compute(self) -> Tensor:
        """Returns the gap."""
        present = self.counts.sum(dim=1) > 0
        positive = int(self.counts[:, self.positive_class].sum())
        if int(present.sum()) < 2 or positive in (0, int(self.counts.sum())):
            return torch.tensor(float("nan"), device=self.counts.device)
        rates = self._proportions()[present, self.positive_class]
        return (rates.max() - rates.min()).float()


class PairwiseBiasScore(_PredictedClassCounts):
    """InvDiff's bias score: mean absolute difference between class counts over all class pairs.

    Per group (InvDiff: per prompt) with class counts ``c_k`` and ``N`` samples,
    ``bias = sum_{i<j} |c_i - c_j| / N / (K (K - 1) / 2)``; 0 is balanced, and for two classes it equals
    ``|p_0 - p_1|``. The result is the mean over groups that have samples (``nan`` without samples).

    Args:
        num_classes: classes of the attribute.
        num_groups: number of groups (prompts, conditions) to average over.
        per_group: return each group's score instead of their mean.
    """

    def __init__(self, num_classes: int, num_groups: int = 1, per_group: bool = False) -> None:
        super().__init__(num_classes, num_groups)
        self.per_group = per_group

    def compute(self) -> Tensor:
        """Returns the mean bias score over non-empty groups, or with ``per_group`` each group's (``nan`` if empty)."""
        proportions = self._proportions()
        pairs = self.num_classes * (self.num_classes - 1) / 2
        scores = ((proportions[:, :, None] - proportions[:, None, :]).abs().sum(dim=(1, 2)) / 2 / pairs).float()
        if self.per_group:
            return scores
        return scores[self.counts.sum(dim=1) > 0].mean()  # the mean of nothing is nan
