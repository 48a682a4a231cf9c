"""The base of the trainers of models from scratch: AdamW with warm-up, EMA weights with warm-up, atomic export."""

from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from lightning_fair.data.base import AttributeDataModule
from lightning_fair.methods.lifecycle.schedules import adamw_with_warmup
from lightning_fair.utils.options import check_ranges


class EMAPretraining(LightningModule, ABC):
    """The base of the trainers of models from scratch: AdamW with warm-up, EMA weights, atomic export.

    A subclass passes its training options to this constructor, builds the model it trains (:attr:`trained`),
    calls :meth:`average` once on it, and writes a copy of it in :meth:`write`. The EMA is updated after every
    optimizer step with the warm-up decay of :func:`ema_decay`; it is checkpointed with its step count. At the end
    of ``fit`` the EMA model is written into ``output_dir``, replacing it atomically.

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

    def on_fit_end(self) -> None:
        """Writes the EMA model into ``output_dir`` (rank zero only)."""
        if self.trainer.is_global_zero:
            self.export(self.output_dir)

    def export(self, output_dir: str | Path, weights: Literal["ema", "raw"] = "ema") -> Path:
        """Writes the EMA (or raw) model with :meth:`write` into ``output_dir``, atomically.

        Everything is written into a hidden folder beside ``output_dir`` that then replaces it: a failure or a kill
        never leaves a half-written model there.
        """
        if weights not in ("ema", "raw"):
            raise ValueError(f"'weights' must be 'ema' or 'raw', got {weights!r}")
        output_dir = Path(output_dir)
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
        try:
            self.write(staging, self.ema.module if weights == "ema" else self.trained)
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
