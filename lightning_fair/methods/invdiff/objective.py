"""InvDiff's output mixing of the frozen and the delta noise predictions, and its group-invariance loss."""

from __future__ import annotations

import math

from torch import Tensor


def check_delta_ratio(ratio: float) -> None:
    """Refuses a ``delta_ratio`` outside the three supported regimes (0 would leave the delta out)."""
    if not math.isfinite(ratio) or ratio == 0:
        raise ValueError(
            f"Option 'delta_ratio' must be a finite non-zero number: in (-1, 1] (r delta + (1 - r) eps), above 1 "
            f"(r delta + eps) or at most -1 (delta + eps); got {ratio}"
        )


def mix_eps(frozen: Tensor, delta: Tensor, ratio: float) -> Tensor:
    """The noise InvDiff samples with: the frozen model's ``eps`` mixed with the delta's output, as the official code.

    ``r`` in (-1, 1]: ``r delta + (1 - r) eps``; ``r > 1``: ``r delta + eps``; ``r <= -1``: ``delta + eps``. With a
    zero-initialised delta the last two start exactly at the frozen model; the first starts at ``(1 - r) eps``.
    """
    if ratio > 1:
        return ratio * delta + frozen
    if ratio <= -1:
        return delta + frozen
    return ratio * delta + (1 - ratio) * frozen


def group_invariance_loss(losses: Tensor, groups: Tensor, invariance_weight: float) -> tuple[Tensor, Tensor]:
    """Mean over groups of the group losses plus ``invariance_weight`` times their variance (V-REx style).

    As the official code: ``L_k = sum_i G_ik l_i / (sum_i G_ik + 1e-9)`` over the batch, groups with ``L_k <= 1e-9``
    (no member in the batch) are left out, the variance is unbiased, and with a single group left the loss is its
    mean.

    Args:
        losses: per-sample losses ``(B,)``.
        groups: per-sample group weights ``(B, K)`` (soft rows, or one-hot labels).
        invariance_weight: ``lambda``.

    Returns:
        The loss and the group losses ``(K,)`` (0 for an absent group).
    """
    groups = groups.to(losses.dtype)
    group_losses = (losses[:, None] * groups).sum(dim=0) / (groups.sum(dim=0) + 1e-9)
    present = group_losses[group_losses > 1e-9]
    if len(present) < 2:
        return present.mean() if len(present) else losses.mean(), group_losses
    return present.mean() + invariance_weight * present.var(), group_losses
