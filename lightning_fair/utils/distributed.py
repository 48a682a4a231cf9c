"""Collective operations that also work outside a distributed run."""

from __future__ import annotations

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
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


__all__ = ["sum_over_processes"]


class CalibrationAwareDDPStrategy(DDPStrategy):
    """Lightning's DDP strategy, except that a module without trainable parameters is not wrapped.

    ``DistributedDataParallel`` refuses such a module, yet a training-free method's ``fit`` (e.g. the tau search of
    Attribute Switching) runs on many processes and only exchanges its sums itself. Registered under Lightning's
    names ``ddp``, ``ddp_spawn``, ``ddp_fork`` and ``ddp_notebook`` when ``lightning_fair.methods`` is imported.
    """

    def _setup_model(self, model: Module) -> Module:
        if not any(parameter.requires_grad for parameter in model.parameters()):
            return model
        return super()._setup_model(model)


for _name, _start_method in (("ddp", "popen"), ("ddp_spawn", "spawn"), ("ddp_fork", "fork"), ("ddp_notebook", "fork")):
    StrategyRegistry.register(
        _name,
        CalibrationAwareDDPStrategy,
        description=f"DDP with `start_method` '{_start_method}' that leaves modules without trainable parameters alone",
        override=True,
        start_method=_start_method,
    )
