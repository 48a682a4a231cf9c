"""Whether a fit trained its whole budget of optimizer steps (or epochs), or what stopped it before."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Timer


@dataclass(frozen=True)
class FitBudget:
    """How far a fit got against its budget.

    Attributes:
        steps: optimizer steps trained.
        max_steps: the step budget (``None``: none).
        epochs: epochs completed.
        max_epochs: the epoch budget (``None``: none).
        stopped_by: what ended the fit before its budget (``max_time``, ``interrupted``, ``a callback``), ``None``
            when it trained its whole budget.
    """

    steps: int
    max_steps: int | None
    epochs: int
    max_epochs: int | None
    stopped_by: str | None

    @property
    def complete(self) -> bool:
        """Whether the fit trained its whole budget."""
        return self.stopped_by is None

    def as_dict(self) -> dict[str, Any]:
        """The fields and ``complete``, for a model card."""
        return {**asdict(self), "complete": self.complete}

    def summary(self) -> str:
        """One line: how far the fit got (and what stopped it)."""
        if self.max_steps is not None:
            progress = f"step {self.steps:,} of {self.max_steps:,} ({self.steps / self.max_steps:.0%})"
        elif self.max_epochs is not None:
            progress = f"epoch {self.epochs} of {self.max_epochs} ({self.steps:,} steps)"
        else:
            progress = f"{self.steps:,} steps (no step or epoch budget)"
        return progress if self.complete else f"stopped by {self.stopped_by} at {progress}"


def fit_budget(trainer: Trainer) -> FitBudget:
    """The budget state of ``trainer``'s fit (at its end: what stopped it).

    A fit with neither ``max_steps`` nor ``max_epochs`` (``-1``) has only ``max_time``: reaching it is its budget.
    """
    max_steps = trainer.max_steps if trainer.max_steps is not None and trainer.max_steps > 0 else None
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
    steps, epochs = trainer.global_step, trainer.current_epoch
    reached = (max_steps is not None and steps >= max_steps) or (max_epochs is not None and epochs >= max_epochs)
    timed_out = any(
        (remaining := timer.time_remaining("train")) is not None and remaining <= 0
        for timer in trainer.callbacks
        if isinstance(timer, Timer)
    )
    stopped_by = None
    if trainer.interrupted:
        stopped_by = "interrupted"
    elif not reached and (max_steps is not None or max_epochs is not None):
        stopped_by = "max_time" if timed_out else "a callback"
    return FitBudget(steps, max_steps, epochs, max_epochs, stopped_by)
