"""Collective operations that also work outside a distributed run."""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor
from torch.nn import Module


def sum_over_processes(tensor: Tensor) -> Tensor:
    """The element-wise sum of ``tensor`` over all processes (``tensor`` itself in a single process).

    Not differentiable: callers add the other processes' part as a constant to their own differentiable part.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor.detach().clone()
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


__all__ = ["DDP_START_METHODS", "CalibrationAwareDDPStrategy", "gather_rows", "sum_over_processes"]

DDP_START_METHODS = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}


class CalibrationAwareDDPStrategy(DDPStrategy):
    """Lightning's DDP strategy, except that a module without trainable parameters is not wrapped.

    ``DistributedDataParallel`` refuses such a module, yet a training-free method's ``fit`` (e.g. the tau search of
    Attribute Switching) runs on many processes and only exchanges its sums itself. The command line runs this
    strategy for ``--trainer.strategy`` ``ddp``, ``ddp_spawn``, ``ddp_fork`` and ``ddp_notebook`` (see
    :data:`DDP_START_METHODS`); in Python, pass ``Trainer(strategy=CalibrationAwareDDPStrategy())``.
    """

    def _setup_model(self, model: Module) -> Module:
        if not any(parameter.requires_grad for parameter in model.parameters()):
            return model
        return super()._setup_model(model)


def gather_rows(tensor: Tensor) -> Tensor:
    """The rows of ``tensor`` from every process, concatenated in rank order (``tensor`` itself in a single process).

    The processes may hold different numbers of rows (the same trailing shape and dtype); none are padded or repeated.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    largest = int(max(int(c) for c in counts))
    padded = torch.zeros((largest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([rows[: int(c)] for rows, c in zip(gathered, counts, strict=True)])
