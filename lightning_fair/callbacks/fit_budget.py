"""A loud warning at the end of a fit that a time limit (or anything else) stopped before its budget."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_fair.utils.fit_budget import fit_budget

INCOMPLETE = "FIT INCOMPLETE"


class FitBudgetCheck(Callback):
    """Says at the end of every fit how far it got against its budget of steps (or epochs).

    A fit that ``max_time`` (a safety cap) or a callback stopped before ``max_steps``/``max_epochs`` ends with a
    warning that starts with ``FIT INCOMPLETE``, says how far it got and how to resume it: what it wrote is not the
    configured model. The command line adds this callback to every run.
    """

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Logs the budget reached, or warns that the fit stopped short."""
        budget = fit_budget(trainer)
        if budget.complete:
            rank_zero_info(f"Fit complete: {budget.summary()}")
            return
        rank_zero_warn(
            f"{INCOMPLETE}: {budget.summary()}; what it wrote is not the configured model. Resume it: the same "
            "command with --ckpt_path last (from its last checkpoint), or raise --trainer.max_time"
        )
