"""Hooks every method's runs share: the backbone's precision on the device, and a stop asked for between batches."""

from __future__ import annotations

from typing import Any

from lightning_fair.backbones import DiffusionBackbone
from lightning_fair.utils.preemption import stop_if_terminated


class RunHooks:
    """The Lightning hooks of a :class:`~lightning_fair.methods.base.DebiasingMethod` around its runs.

    The backbone is put in the precision of the device when a run starts (half-precision latent UNet on a GPU), and a
    test or predict run asked to terminate stops after the batch whose callbacks have all done their work.
    """

    backbone: DiffusionBackbone

    def on_fit_start(self) -> None:
        """Puts the backbone in the precision of the device (half-precision latent UNet on a GPU)."""
        self.backbone.use_precision_for(self.device)

    def on_test_start(self) -> None:
        """Puts the backbone in the precision of the device."""
        self.backbone.use_precision_for(self.device)

    def on_predict_start(self) -> None:
        """Puts the backbone in the precision of the device."""
        self.backbone.use_precision_for(self.device)

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Stops the run here, every callback's work on the batch done, if it was asked to terminate."""
        stop_if_terminated(self.trainer)

    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Stops the run here, every callback's work on the batch done, if it was asked to terminate."""
        stop_if_terminated(self.trainer)
