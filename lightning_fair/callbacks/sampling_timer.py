"""The time a run spends generating: the sum of its test steps, accelerator work included."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class SamplingTimer(Callback):
    """Adds up the seconds of every ``test`` step (synchronising a CUDA device at both ends); reset at each run.

    Put it first in the trainer's callbacks, so that its clock stops before the other callbacks handle the batch
    (e.g. the evaluator labelling the images).
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start: float | None = None

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Starts a new sum."""
        self.seconds = 0.0

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Starts the clock of the step."""
        _synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Adds the step's seconds."""
        _synchronize(pl_module.device)
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self._start = None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
