"""Progress as log lines, for runs whose output goes to a file (SLURM, ``nohup``)."""

from __future__ import annotations

import datetime
import math
import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.utilities import rank_zero_info


class ProgressLog(ProgressBar):
    """Logs one line of progress every ``interval`` seconds and at the last batch of each loop.

    A progress bar redraws a line in place, which a log file shows only when the run ends. The command line puts
    this in the bar's place when standard output is not a terminal; a config can also name it in
    ``trainer.callbacks``. A line reads e.g.
    ``Training epoch 2/3: batch 40/188 (21%), 0:00:12 elapsed, 0:00:45 left, train/loss=0.4312``; a fit with a
    budget of steps also says ``step 416/4,000, 0:31:10 to the budget`` (at the pace of this run's steps so far).

    Args:
        interval: seconds between two lines of the same loop (0: one line per batch).
    """

    def __init__(self, interval: float = 30.0) -> None:
        super().__init__()
        if not interval >= 0:
            raise ValueError(f"Option 'interval' must be non-negative, got {interval}")
        self.interval = interval
        self.enabled = True
        self.started = self.reported = self.fit_started = 0.0
        self.first_step = 0

    def disable(self) -> None:
        """Stops logging (Lightning calls it on processes other than the first)."""
        self.enabled = False

    def enable(self) -> None:
        """Logs again."""
        self.enabled = True

    def _start(self, *args: Any) -> None:
        self.started = self.reported = time.monotonic()

    on_train_epoch_start = on_validation_epoch_start = on_test_epoch_start = on_predict_epoch_start = _start

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Starts the clock of the fit's steps (a resumed fit counts from the step it resumed at)."""
        self.fit_started, self.first_step = time.monotonic(), trainer.global_step

    def _track_dataloader(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.has_dataloader_changed(dataloader_idx)  # the base class's batch totals are per dataloader

    on_validation_batch_start = on_test_batch_start = on_predict_batch_start = _track_dataloader

    def _report(
        self, trainer: Trainer, description: str, batch_idx: int, total: float, metrics: bool, steps: str = ""
    ) -> None:
        now, done = time.monotonic(), batch_idx + 1
        if not self.enabled or (now - self.reported < self.interval and done != total):
            return
        self.reported = now
        elapsed = now - self.started
        if math.isfinite(total) and total >= done:  # a total Lightning under-counts (e.g. cut by max_steps): none
            left = elapsed / done * (total - done)
            position = f"batch {done}/{int(total)} ({done / total:.0%}), {_duration(elapsed)} elapsed, "
            position += f"{_duration(left)} left"
        else:
            position = f"batch {done}, {_duration(elapsed)} elapsed"
        values = self.get_metrics(trainer, trainer.lightning_module) if metrics else {}
        shown = [f"{name}={_number(value)}" for name, value in values.items() if name != "v_num"]
        rank_zero_info(f"{description}: {', '.join([position, *([steps] if steps else []), *shown])}")

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Logs the training progress of the epoch with the progress-bar metrics."""
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        description = f"{self.train_description} epoch {trainer.current_epoch + 1}{epochs}"
        self._report(trainer, description, batch_idx, self.total_train_batches, True, self._budget(trainer))

    def _budget(self, trainer: Trainer) -> str:
        """``step N/max_steps`` and the time to reach it at this run's pace; empty without a step budget."""
        if trainer.max_steps is None or trainer.max_steps <= 0:
            return ""
        text = f"step {trainer.global_step:,}/{trainer.max_steps:,}"
        done = trainer.global_step - self.first_step
        if done > 0:
            pace = (time.monotonic() - self.fit_started) / done
            text += f", {_duration(pace * max(trainer.max_steps - trainer.global_step, 0))} to the budget"
        return text

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        """Logs the validation progress (not that of the sanity check)."""
        if trainer.sanity_checking:
            return
        self._report(trainer, self.validation_description, batch_idx, self.total_val_batches_current_dataloader, False)

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        """Logs the test progress."""
        self._report(trainer, self.test_description, batch_idx, self.total_test_batches_current_dataloader, False)

    def on_predict_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        """Logs the predict progress."""
        total = self.total_predict_batches_current_dataloader
        self._report(trainer, self.predict_description, batch_idx, total, False)


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
