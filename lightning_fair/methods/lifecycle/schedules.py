"""Learning-rate schedules of the trained modules: linear warm-up, then constant or a cosine decay to 0."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn


def adamw_with_warmup(
    parameters: Iterable[nn.Parameter], learning_rate: float, weight_decay: float, warmup_steps: int
) -> dict:
    """AdamW with a linear warm-up over ``warmup_steps`` optimizer steps, then the full learning rate."""
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    warmup = max(1, warmup_steps)
    return per_step(optimizer, lambda step: min(1.0, (step + 1) / warmup))


def adamw_warmup_cosine(
    parameters: Iterable[nn.Parameter], learning_rate: float, weight_decay: float, warmup_steps: int, total_steps: int
) -> dict:
    """AdamW with a linear warm-up, then a cosine decay to 0 at ``total_steps`` (at least one step after warm-up)."""
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, betas=(0.9, 0.999), weight_decay=weight_decay, eps=1e-8)
    total = max(total_steps, warmup_steps + 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / (total - warmup_steps))))

    return per_step(optimizer, factor)


def per_step(optimizer: torch.optim.Optimizer, factor: Callable[[int], float]) -> dict:
    """Lightning's optimizer configuration with ``factor(step)`` times the learning rate at every optimizer step."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
