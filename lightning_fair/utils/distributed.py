"""Collective operations that also work outside a distributed run."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


def sum_over_processes(tensor: Tensor) -> Tensor:
    """The element-wise sum of ``tensor`` over all processes (``tensor`` itself in a single process).

    Not differentiable: callers add the other processes' part as a constant to their own differentiable part.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor.detach().clone()
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


__all__ = ["sum_over_processes"]
