"""The time a run spends generating: its test steps after a warm-up batch, accelerator work included."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class SamplingTimer(Callback):
    """Times every ``test`` step (synchronising a CUDA device at both ends) but the first ``warmup_batches``.

    The first batch of a run pays one-off costs (the first calls of the model: memory, kernels, thread pools),
    which would otherwise weigh on whichever method runs first; so it is timed apart (``warmup_seconds``) and
    :attr:`seconds` extrapolates the other batches' time per sample to every sample of the run. A run of no more
    than ``warmup_batches`` batches is timed whole. Reset at each run.

    Each timed batch's pace (seconds per sample) is kept in :attr:`paces`; :attr:`fastest_seconds` is the run at
    the fastest of them. Other work on a shared machine (other processes, a hypervisor taking its share) only ever
    slows a batch down, so the fastest pace is the closest to the method's own cost, as ``timeit`` takes the
    fastest of its repeats; :attr:`seconds` is the run at the mean pace, what the run took.

    Put it first in the trainer's callbacks, so that its clock stops before the other callbacks handle the batch
    (e.g. the evaluator labelling the images).

    Args:
        warmup_batches: leading batches timed apart.
    """

    def __init__(self, warmup_batches: int = 1) -> None:
        if warmup_batches < 0:
            raise ValueError(f"Option 'warmup_batches' must be at least 0, got {warmup_batches}")
        self.warmup_batches = warmup_batches
        self.timed_seconds = self.warmup_seconds = 0.0
        self.timed_samples = self.warmup_samples = self.batches = 0
        self.paces: list[float] = []
        self._start: float | None = None

    @property
    def seconds(self) -> float:
        """Sampling seconds of the whole run at the pace of the batches after the warm-up (all, without them)."""
        if self.timed_samples == 0:
            return self.warmup_seconds
        return self.timed_seconds / self.timed_samples * (self.timed_samples + self.warmup_samples)

    @property
    def fastest_seconds(self) -> float:
        """Sampling seconds of the whole run at the pace of its fastest batch after the warm-up (all, without one)."""
        if not self.paces:
            return self.warmup_seconds
        return min(self.paces) * (self.timed_samples + self.warmup_samples)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Starts new sums."""
        self.timed_seconds = self.warmup_seconds = 0.0
        self.timed_samples = self.warmup_samples = self.batches = 0
        self.paces = []

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
        """Adds the step's seconds and samples to the warm-up or to the timed sums."""
        _synchronize(pl_module.device)
        if self._start is None:
            return
        elapsed, samples = time.perf_counter() - self._start, len(batch["index"])
        self._start = None
        self.batches += 1
        if self.batches <= self.warmup_batches:
            self.warmup_seconds += elapsed
            self.warmup_samples += samples
        else:
            self.timed_seconds += elapsed
            self.timed_samples += samples
            self.paces.append(elapsed / samples)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
