"""The time a run spends generating: its test steps after a warm-up batch, accelerator work included."""

from __future__ import annotations

import statistics
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

    With a ``reference`` method (e.g. plain sampling of the same backbone), each timed batch is followed by the
    reference generating the same samples, timed too: :attr:`paired_ratio` is the median over the batches of the
    run's time over the reference's. A shared machine's speed drifts over minutes (other processes, a hypervisor
    taking its share), by more than methods differ; two batches run one after the other see the same speed, so their
    ratio is the method's cost against the reference's, whenever it is measured.

    Put it first in the trainer's callbacks, so that its clock stops before the other callbacks handle the batch
    (e.g. the evaluator labelling the images).

    Args:
        warmup_batches: leading batches timed apart.
        reference: a method whose ``sample(indices)`` generates the same samples for comparison; ``None``: none.
    """

    def __init__(self, warmup_batches: int = 1, reference: LightningModule | None = None) -> None:
        if warmup_batches < 0:
            raise ValueError(f"Option 'warmup_batches' must be at least 0, got {warmup_batches}")
        self.warmup_batches = warmup_batches
        self.reference = reference
        self.timed_seconds = self.warmup_seconds = 0.0
        self.timed_samples = self.warmup_samples = self.batches = 0
        self.pair_ratios: list[float] = []
        self._start: float | None = None

    @property
    def seconds(self) -> float:
        """Sampling seconds of the whole run at the pace of the batches after the warm-up (all, without them)."""
        if self.timed_samples == 0:
            return self.warmup_seconds
        return self.timed_seconds / self.timed_samples * (self.timed_samples + self.warmup_samples)

    @property
    def paired_ratio(self) -> float | None:
        """The median over the timed batches of their time over the reference's on the same samples (``None``: none)."""
        return statistics.median(self.pair_ratios) if self.pair_ratios else None

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Starts new sums; puts the reference on the run's device."""
        self.timed_seconds = self.warmup_seconds = 0.0
        self.timed_samples = self.warmup_samples = self.batches = 0
        self.pair_ratios = []
        if self.reference is not None:
            self.reference.to(pl_module.device).eval()

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
        """Adds the step's seconds and samples to the warm-up or to the timed sums; times the reference after it."""
        _synchronize(pl_module.device)
        if self._start is None:
            return
        elapsed, samples = time.perf_counter() - self._start, len(batch["index"])
        self._start = None
        self.batches += 1
        if self.batches <= self.warmup_batches:
            self.warmup_seconds += elapsed
            self.warmup_samples += samples
            return
        self.timed_seconds += elapsed
        self.timed_samples += samples
        if self.reference is not None and samples:
            start = time.perf_counter()
            self.reference.sample(batch["index"])
            _synchronize(pl_module.device)
            self.pair_ratios.append(elapsed / (time.perf_counter() - start))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
