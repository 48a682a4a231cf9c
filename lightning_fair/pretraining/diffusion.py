"""Training a pixel ``UNet2DModel`` from scratch (DDPM loss), class-conditional or not."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import Tensor, nn

from lightning_fair.diffusion.schedulers import pipeline_entry, training_scheduler
from lightning_fair.diffusion.seeding import NOISE_STREAM, per_sample_randn, sample_generators, training_generators
from lightning_fair.models import CONDITIONING_FILE, resolve_model_path
from lightning_fair.pretraining.ema import EMAPretraining, check_group_norm


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
    (``val/loss_raw``). At the end of ``fit`` the weights of lower validation loss (see
    :class:`~lightning_fair.pretraining.ema.EMAPretraining`) are written with ``save_pretrained`` into
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
        super().__init__(
            output_dir, image_size, learning_rate, weight_decay, warmup_steps, ema_decay, ema_inv_gamma, ema_power, seed
        )
        self.save_hyperparameters()
        self.condition_attribute = condition_attribute
        self.condition_dropout = condition_dropout
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
        self.average()
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
                f"Attribute '{self.condition_attribute}' has class {int(labels.max())} but "
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
        loss = self.diffusion_loss(self.unet, batch, self.condition_dropout, generators)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_losses(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """DDPM loss of ``model`` without label dropout, with draws seeded by ``(seed, image index)``."""
        generators = sample_generators(self.seed, batch["index"], NOISE_STREAM)
        return {"loss": self.diffusion_loss(model, batch, dropout=0.0, generators=generators)}

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
                "attribute": self.condition_attribute,
                "num_classes": self.null_label,
                "null_label": self.null_label,
            }
        record = {
            "conditioning": conditioning,
            "image_size": self.image_size,
            "center_crop_fraction": self.training_view(),
        }
        (folder / CONDITIONING_FILE).write_text(json.dumps(record, indent=2) + "\n")


def _plain(value: object) -> object:
    """A config value with tuples as lists, so that saved and configured values compare equal."""
    return list(value) if isinstance(value, tuple) else value
