"""Training models from scratch with EMA weights (the shared base), and the pixel UNet trainer."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from lightning_fair.data.base import AttributeDataModule
from lightning_fair.diffusion.schedulers import pipeline_entry, training_scheduler
from lightning_fair.diffusion.seeding import NOISE_STREAM, per_sample_randn, sample_generators, training_generators
from lightning_fair.models import CONDITIONING_FILE, resolve_model_path
from lightning_fair.utils.options import check_ranges


class EMAPretraining(LightningModule, ABC):
    """The base of the trainers of models from scratch: AdamW with warm-up, EMA weights, atomic export.

    A subclass builds the model it trains (:attr:`trained`), calls :meth:`average` once on it, and writes a copy of
    it in :meth:`write`; its ``hparams`` hold ``output_dir``, ``image_size``, ``learning_rate``, ``weight_decay``
    and ``warmup_steps``. The EMA is updated after every optimizer step with the warm-up decay of
    :func:`ema_decay`; it is checkpointed with its step count. At the end of ``fit`` the EMA model is written into
    ``output_dir``, replacing it atomically.
    """

    @property
    @abstractmethod
    def trained(self) -> nn.Module:
        """The module whose weights are optimized and averaged."""

    @abstractmethod
    def write(self, folder: Path, model: nn.Module) -> None:
        """Writes ``model`` (the EMA or the raw copy of :attr:`trained`) and what goes with it into ``folder``."""

    def average(self, ema_decay: float, ema_inv_gamma: float, ema_power: float) -> None:
        """Starts the EMA of :attr:`trained` (``self.ema``), with the warm-up decay of :func:`ema_decay`."""
        update = partial(ema_update, max_decay=ema_decay, inv_gamma=ema_inv_gamma, power=ema_power)
        self.ema = AveragedModel(self.trained, multi_avg_fn=update, use_buffers=True)
        self.ema.requires_grad_(False)

    def setup(self, stage: str) -> None:
        """Refuses training images of another size than ``image_size`` (the size the exported model records)."""
        data = self.trainer.datamodule if self.trainer is not None else None
        if isinstance(data, AttributeDataModule) and data.image_size != self.hparams["image_size"]:
            raise ValueError(
                f"Option 'image_size' of {type(self).__name__} is {self.hparams['image_size']} but the training images "
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
        optimizer = torch.optim.AdamW(
            parameters, lr=self.hparams["learning_rate"], weight_decay=self.hparams["weight_decay"]
        )
        warmup = max(1, self.hparams["warmup_steps"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_end(self) -> None:
        """Writes the EMA model into ``output_dir`` (rank zero only)."""
        if self.trainer.is_global_zero:
            self.export(self.hparams["output_dir"])

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


def check_training_options(
    learning_rate: float,
    weight_decay: float,
    warmup_steps: int,
    ema_decay: float,
    ema_inv_gamma: float,
    ema_power: float,
) -> None:
    """Raises a ``ValueError`` naming the first of the optimizer and EMA options out of its range."""
    check_ranges(
        positive={"learning_rate": learning_rate},
        non_negative={"weight_decay": weight_decay, "warmup_steps": warmup_steps},
    )
    if not 0 <= ema_decay < 1:
        raise ValueError(f"Option 'ema_decay' must lie in [0, 1), got {ema_decay}")
    if ema_inv_gamma <= 0 or ema_power <= 0:
        raise ValueError(f"Options 'ema_inv_gamma' and 'ema_power' must be positive, got {ema_inv_gamma}, {ema_power}")


class DiffusionPretraining(EMAPretraining):
    """Trains an epsilon-predicting ``UNet2DModel`` on any DataModule of the framework (DDPM loss).

    Optionally class-conditional on one attribute with classifier-free null-label dropout: the class
    embedding has ``num_condition_classes + 1`` rows and the last one is the null label (unconditional).
    The noise, timestep and null-label dropout of each image depend only on ``(seed, epoch, image index)``,
    so a fit resumed with ``--ckpt_path`` ends with the weights of an uninterrupted one.

    An exponential moving average (EMA) of the weights is kept after every optimizer step, with the warm-up of
    diffusers' ``EMAModel(use_ema_warmup=True)``: after ``n`` updates the decay is
    ``min(ema_decay, 1 - (1 + n / ema_inv_gamma) ** -ema_power)``. With the defaults (``ema_inv_gamma`` 1,
    ``ema_power`` 3/4, the diffusers value for runs shorter than a few hundred thousand steps) it is 0.97 after
    100 steps, 0.994 after 1,000 and reaches 0.999 at 10,000, so the average soon forgets the random initial
    weights (without warm-up, decay 0.999 keeps ``0.999 ** n`` of them: 45% after 800 steps). The EMA and its
    step count are checkpointed; the validation loss is logged for the EMA (``val/loss``) and the raw weights
    (``val/loss_raw``). At the end of ``fit`` the EMA model is written with ``save_pretrained`` into
    ``output_dir`` as a diffusers ``DDPMPipeline`` folder (``unet/``, ``scheduler/``, ``model_index.json``)
    plus ``lightning_fair.json``, which records the conditioning for the backbone loader.

    Args:
        output_dir: folder the trained model is written to (replaced atomically).
        image_size: side of the square training images.
        in_channels: image channels.
        block_out_channels: channels of each resolution level.
        layers_per_block: ResNet layers per level.
        attention_levels: per level, whether it has self-attention (default: none).
        norm_num_groups: groups of the group norms (must divide every channel count).
        attributes: the DataModule's attribute names (order of the batch's ``attributes`` columns).
        condition_attribute: attribute to condition on (one of ``attributes``); ``None`` for unconditional.
        num_condition_classes: classes of the condition attribute.
        condition_dropout: probability of replacing the condition by the null label in training.
        num_train_timesteps: diffusion steps T.
        beta_schedule: diffusers beta schedule (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``).
        learning_rate: AdamW learning rate after warm-up.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up steps.
        ema_decay: largest decay of the exponential moving average of the weights.
        ema_inv_gamma: warm-up of the EMA decay: the step scale of its growth (diffusers' ``inv_gamma``).
        ema_power: warm-up of the EMA decay: the exponent of its growth (diffusers' ``power``; 2/3 for runs of
            a million steps).
        seed: seed of the noise, timesteps and null-label dropout drawn for each image.
        init_weights: a diffusers folder (or shipped model name) whose UNet weights start the training
            (fine-tuning); its architecture must match the options above.
    """

    def __init__(
        self,
        output_dir: str,
        image_size: int = 32,
        in_channels: int = 3,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        attention_levels: tuple[bool, ...] | None = None,
        norm_num_groups: int = 8,
        attributes: list[str] | None = None,
        condition_attribute: str | None = None,
        num_condition_classes: int = 2,
        condition_dropout: float = 0.1,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 500,
        ema_decay: float = 0.999,
        ema_inv_gamma: float = 1.0,
        ema_power: float = 0.75,
        init_weights: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        levels = len(block_out_channels)
        attention = tuple(attention_levels) if attention_levels is not None else (False,) * levels
        if len(attention) != levels:
            raise ValueError(f"Option 'attention_levels' has {len(attention)} entries for {levels} levels")
        check_group_norm(norm_num_groups, block_out_channels)
        if condition_attribute is not None and condition_attribute not in (attributes or []):
            raise ValueError(
                f"Option 'condition_attribute' ({condition_attribute!r}) must be one of 'attributes': {attributes}"
            )
        if not 0 <= condition_dropout < 1:
            raise ValueError(f"Option 'condition_dropout' must lie in [0, 1), got {condition_dropout}")
        check_training_options(learning_rate, weight_decay, warmup_steps, ema_decay, ema_inv_gamma, ema_power)
        self.save_hyperparameters()
        self.condition_column = None if condition_attribute is None else list(attributes).index(condition_attribute)
        self.null_label = num_condition_classes
        self.unet = UNet2DModel(
            sample_size=image_size,
            in_channels=in_channels,
            out_channels=in_channels,
            layers_per_block=layers_per_block,
            block_out_channels=tuple(block_out_channels),
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
            norm_num_groups=norm_num_groups,
            num_class_embeds=None if condition_attribute is None else num_condition_classes + 1,
        )
        if init_weights is not None:
            self._load_initial_weights(init_weights)
        self.seed = seed
        self.average(ema_decay, ema_inv_gamma, ema_power)
        self.scheduler = training_scheduler(num_train_timesteps, beta_schedule)

    def _load_initial_weights(self, reference: str) -> None:
        path = resolve_model_path(reference, "diffusion model for 'init_weights'")
        subfolder = "unet" if (path / "unet").is_dir() else None
        pretrained = UNet2DModel.from_pretrained(path, subfolder=subfolder)
        differences = [
            f"{key}: {pretrained.config.get(key)} in the model, {_plain(value)} configured"
            for key, value in self.unet.config.items()
            if not key.startswith("_") and _plain(pretrained.config.get(key)) != _plain(value)
        ]
        if differences:
            raise ValueError(
                f"The UNet in '{path}' (option 'init_weights') does not match the configured architecture: "
                + "; ".join(differences)
            )
        self.unet.load_state_dict(pretrained.state_dict())

    def _class_labels(
        self, batch: dict[str, Tensor], dropout: float, generators: list[torch.Generator]
    ) -> Tensor | None:
        """The condition column of ``batch``, each label replaced by the null label with probability ``dropout``."""
        if self.condition_column is None:
            return None
        labels = batch["attributes"][:, self.condition_column].clone()
        if labels.max() >= self.null_label:
            raise ValueError(
                f"Attribute '{self.hparams['condition_attribute']}' has class {int(labels.max())} but "
                f"'num_condition_classes' is {self.null_label}"
            )
        dropped = torch.cat([torch.rand(1, generator=generator) for generator in generators]) < dropout
        labels[dropped.to(labels.device)] = self.null_label
        return labels

    def diffusion_loss(
        self, unet: UNet2DModel, batch: dict[str, Tensor], dropout: float, generators: list[torch.Generator]
    ) -> Tensor:
        """Mean squared error of ``unet``'s predicted noise at uniformly drawn timesteps.

        Image ``i`` draws its timestep, its noise and whether its label is dropped from ``generators[i]``.
        """
        images = batch["image"]
        steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.cat([torch.randint(0, steps, (1,), generator=g) for g in generators]).to(images.device)
        noise = per_sample_randn(generators, tuple(images.shape[1:]), images.device)
        noisy = self.scheduler.add_noise(images, noise, timesteps)
        prediction = unet(noisy, timesteps, class_labels=self._class_labels(batch, dropout, generators)).sample
        return F.mse_loss(prediction, noise)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """DDPM loss with null-label dropout; the draws of each image depend on ``(seed, epoch, index)``."""
        generators = training_generators(self.seed, self.current_epoch, batch["index"])
        loss = self.diffusion_loss(self.unet, batch, self.hparams["condition_dropout"], generators)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """DDPM loss of the EMA (``val/loss``) and the raw (``val/loss_raw``) weights.

        Both with the same draws per image, seeded by ``(seed, image index)``: the same in every validation.
        """
        for name, unet in (("val/loss", self.ema.module), ("val/loss_raw", self.unet)):
            generators = sample_generators(self.seed, batch["index"], NOISE_STREAM)
            loss = self.diffusion_loss(unet, batch, dropout=0.0, generators=generators)
            self.log(name, loss, prog_bar=name == "val/loss", sync_dist=True)

    @property
    def trained(self) -> nn.Module:
        """The UNet."""
        return self.unet

    def write(self, folder: Path, model: nn.Module) -> None:
        """Writes ``model`` as a diffusers ``DDPMPipeline`` folder with the noise scheduler, plus the record.

        The record (``lightning_fair.json``) holds the conditioning and the view of the training images
        (``center_crop_fraction`` of the training DataModule; ``null`` when the model was not fitted on one), which
        tells classifiers how to crop generated images to their own view.
        """
        model.save_pretrained(folder / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(folder / "scheduler")
        model_index = {
            "_class_name": "DDPMPipeline",
            "unet": ["diffusers", "UNet2DModel"],
            "scheduler": pipeline_entry(self.scheduler),
        }
        (folder / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
        conditioning = None
        if self.condition_column is not None:
            conditioning = {
                "attribute": self.hparams["condition_attribute"],
                "num_classes": self.null_label,
                "null_label": self.null_label,
            }
        record = {
            "conditioning": conditioning,
            "image_size": self.hparams["image_size"],
            "center_crop_fraction": self.training_view(),
        }
        (folder / CONDITIONING_FILE).write_text(json.dumps(record, indent=2) + "\n")


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


def _plain(value: object) -> object:
    """A config value with tuples as lists, so that saved and configured values compare equal."""
    return list(value) if isinstance(value, tuple) else value
