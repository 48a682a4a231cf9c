"""The base of the trainers of models from scratch: AdamW with warm-up, EMA weights with warm-up, atomic export."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from lightning_fair.data.base import AttributeDataModule
from lightning_fair.methods.lifecycle.schedules import adamw_with_warmup
from lightning_fair.utils.fit_budget import fit_budget
from lightning_fair.utils.options import check_ranges

TRAINING_RECORD = "training.json"  # beside an exported model: weights kept, validation losses, steps and budget


class EMAPretraining(LightningModule, ABC):
    """The base of the trainers of models from scratch: AdamW with warm-up, EMA weights, atomic export.

    A subclass passes its training options to this constructor, builds the model it trains (:attr:`trained`),
    calls :meth:`average` once on it, gives its :meth:`validation_losses` and writes a copy of it in :meth:`write`.
    The EMA is updated after every optimizer step with the warm-up decay of :func:`ema_decay`; it is checkpointed
    with its step count. Validation logs the losses of both (``val/loss`` for the EMA, ``val/loss_raw`` for the raw
    weights). At the end of training the weights of lower validation loss over the validation batches (the EMA
    on a tie or without validation data) are written into ``output_dir``, replacing it atomically, with
    ``training.json``: the weights kept, both losses, and the steps trained against the budget
    (:class:`~lightning_fair.utils.fit_budget.FitBudget`).

    Args:
        output_dir: folder the trained model is written to (replaced atomically).
        image_size: side of the square training images.
        learning_rate: AdamW learning rate after warm-up.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up steps.
        ema_decay: largest decay of the exponential moving average of the weights.
        ema_inv_gamma: warm-up of the EMA decay: the step scale of its growth.
        ema_power: warm-up of the EMA decay: the exponent of its growth.
        seed: seed of what is drawn for each image.
    """

    def __init__(
        self,
        output_dir: str,
        image_size: int,
        learning_rate: float,
        weight_decay: float,
        warmup_steps: int,
        ema_decay: float,
        ema_inv_gamma: float,
        ema_power: float,
        seed: int,
    ) -> None:
        super().__init__()
        check_ranges(
            positive={"learning_rate": learning_rate},
            non_negative={"weight_decay": weight_decay, "warmup_steps": warmup_steps},
        )
        if not 0 <= ema_decay < 1:
            raise ValueError(f"Option 'ema_decay' must lie in [0, 1), got {ema_decay}")
        if ema_inv_gamma <= 0 or ema_power <= 0:
            raise ValueError(
                f"Options 'ema_inv_gamma' and 'ema_power' must be positive, got {ema_inv_gamma}, {ema_power}"
            )
        self.output_dir = output_dir
        self.image_size = image_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.ema_decay = ema_decay
        self.ema_inv_gamma = ema_inv_gamma
        self.ema_power = ema_power
        self.seed = seed

    @property
    @abstractmethod
    def trained(self) -> nn.Module:
        """The module whose weights are optimized and averaged."""

    @abstractmethod
    def write(self, folder: Path, model: nn.Module) -> None:
        """Writes ``model`` (the EMA or the raw copy of :attr:`trained`) and what goes with it into ``folder``."""

    @abstractmethod
    def validation_losses(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The losses of ``model`` (the EMA or the raw copy) on a validation batch, ``loss`` first.

        Drawn the same way every time, so that the two models and two validations compare on the same draws.
        """

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """The losses of the EMA (``val/<name>``) and the raw weights (``val/<name>_raw``)."""
        for suffix, model in (("", self.ema.module), ("_raw", self.trained)):
            for name, value in self.validation_losses(model, batch).items():
                self.log(f"val/{name}{suffix}", value, prog_bar=name == "loss" and not suffix, sync_dist=True)

    @torch.no_grad()
    def weights_losses(self) -> dict[str, float] | None:
        """The mean validation ``loss`` of the EMA and the raw weights over the trainer's validation batches.

        ``None`` without validation data (no datamodule, no val split, or ``limit_val_batches`` 0).
        """
        trainer = self.trainer
        loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None
        limit = trainer.limit_val_batches
        if loader is None or not limit:
            return None
        count = limit if isinstance(limit, int) else max(1, math.ceil(limit * len(loader)))
        was_training, totals, images = self.training, {"ema": 0.0, "raw": 0.0}, 0
        self.eval()
        try:
            for batch in itertools.islice(loader, count):
                batch = trainer.strategy.batch_to_device(batch, self.device)
                size = len(batch["index"])
                for name, model in (("ema", self.ema.module), ("raw", self.trained)):
                    totals[name] += float(self.validation_losses(model, batch)["loss"]) * size
                images += size
        finally:
            self.train(was_training)
        return {name: total / images for name, total in totals.items()} if images else None

    def average(self) -> None:
        """Starts the EMA of :attr:`trained` (``self.ema``), with the warm-up decay of :func:`ema_decay`."""
        update = partial(ema_update, max_decay=self.ema_decay, inv_gamma=self.ema_inv_gamma, power=self.ema_power)
        self.ema = AveragedModel(self.trained, multi_avg_fn=update, use_buffers=True)
        self.ema.requires_grad_(False)

    def setup(self, stage: str) -> None:
        """Refuses training images of another size than ``image_size`` (the size the exported model records)."""
        data = self.trainer.datamodule if self.trainer is not None else None
        if isinstance(data, AttributeDataModule) and data.image_size != self.image_size:
            raise ValueError(
                f"Option 'image_size' of {type(self).__name__} is {self.image_size} but the training images "
                f"of '{data.root}' are {data.image_size} px: set both to the same size"
            )

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Steps the optimizer, then updates the EMA weights.

        Both happen before Lightning counts the batch as trained, so every checkpoint holds weights and EMA of the
        same step (a checkpoint taken in ``on_train_batch_end``, e.g. every N steps, would otherwise miss one update).
        """
        super().optimizer_step(*args, **kwargs)
        self.ema.update_parameters(self.trained)

    def configure_optimizers(self) -> dict:
        """AdamW on the trainable weights of :attr:`trained` with a linear warm-up."""
        parameters = [parameter for parameter in self.trained.parameters() if parameter.requires_grad]
        return adamw_with_warmup(parameters, self.learning_rate, self.weight_decay, self.warmup_steps)

    def on_train_end(self) -> None:
        """Writes the weights of lower validation loss into ``output_dir`` with ``training.json`` (rank zero).

        At the end of training, before the callbacks' ``on_fit_end``: a callback can check the exported model.
        """
        self.exported = True
        losses = self.weights_losses()
        weights: Literal["ema", "raw"] = "raw" if losses is not None and losses["raw"] < losses["ema"] else "ema"
        budget = fit_budget(self.trainer)
        record = {"weights": weights, "val_loss": losses, **budget.as_dict()}
        if losses is None:
            kept = "EMA weights kept (no validation data to compare them with the raw ones)"
        else:
            kept = f"{'EMA' if weights == 'ema' else 'raw'} weights kept (validation loss EMA "
            kept += f"{losses['ema']:.5f}, raw {losses['raw']:.5f})"
        if self.trainer.is_global_zero:
            folder = self.export(self.output_dir, weights, record)
            rank_zero_info(f"{type(self).__name__}: {kept}; {budget.summary()}; written to {folder}")

    def on_fit_end(self) -> None:
        """Exports when training did not run: a fit resumed from a checkpoint already at its budget.

        Lightning then skips the training loop and its ``on_train_end``; the model is written here instead (after the
        callbacks' ``on_fit_end``, so a check of the exported model there sees the previous export).
        """
        if not getattr(self, "exported", False):
            self.on_train_end()

    def export(
        self, output_dir: str | Path, weights: Literal["ema", "raw"] = "ema", record: dict[str, Any] | None = None
    ) -> Path:
        """Writes the EMA (or raw) model with :meth:`write` into ``output_dir``, atomically.

        Everything is written into a hidden folder beside ``output_dir`` that then replaces it: a failure or a kill
        never leaves a half-written model there. ``record`` (how the model was trained) goes to ``training.json``.
        """
        if weights not in ("ema", "raw"):
            raise ValueError(f"'weights' must be 'ema' or 'raw', got {weights!r}")
        output_dir = Path(output_dir)
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
        try:
            self.write(staging, self.ema.module if weights == "ema" else self.trained)
            if record is not None:
                (staging / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n")
            if output_dir.exists():
                shutil.rmtree(output_dir)
            os.replace(staging, output_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return output_dir

    def training_view(self) -> float | None:
        """``center_crop_fraction`` of the training DataModule; ``None`` when the model was not fitted on one."""
        data = self._trainer.datamodule if self._trainer is not None else None
        return data.center_crop_fraction if isinstance(data, AttributeDataModule) else None


def check_group_norm(norm_num_groups: int, block_out_channels: tuple[int, ...]) -> None:
    """Raises a ``ValueError`` unless ``norm_num_groups`` divides every channel count."""
    if any(channels % norm_num_groups for channels in block_out_channels):
        raise ValueError(f"Option 'norm_num_groups' ({norm_num_groups}) must divide {list(block_out_channels)}")


def ema_decay(step: int, max_decay: float, inv_gamma: float, power: float) -> float:
    """The EMA decay after ``step`` updates: ``min(max_decay, 1 - (1 + step / inv_gamma) ** -power)``."""
    return min(max_decay, 1 - (1 + step / inv_gamma) ** -power)


@torch.no_grad()
def ema_update(
    averaged: list[Tensor],
    current: list[Tensor],
    num_averaged: Tensor,
    max_decay: float,
    inv_gamma: float,
    power: float,
) -> None:
    """``AveragedModel``'s ``multi_avg_fn``: one EMA step with the warm-up decay of its update count."""
    decay = ema_decay(int(num_averaged), max_decay, inv_gamma, power)
    if torch.is_floating_point(averaged[0]):
        torch._foreach_lerp_(averaged, current, 1 - decay)
    else:
        for average, value in zip(averaged, current, strict=True):
            average.copy_(value)
