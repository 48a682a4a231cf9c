"""Training the ``AutoencoderKL`` of a latent diffusion model from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from lightning.pytorch import LightningDataModule
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_fair.data.base import AttributeDataModule
from lightning_fair.data.dataset import AttributeImageDataset
from lightning_fair.diffusion.seeding import NOISE_STREAM, per_sample_randn, sample_generators, training_generators
from lightning_fair.pretraining.ema import EMAPretraining, check_group_norm
from lightning_fair.utils.options import check_ranges


class VAEPretraining(EMAPretraining):
    """Trains a diffusers ``AutoencoderKL`` (the VAE of latent diffusion, as LDM and Stable Diffusion) on images.

    The loss is LDM's without its perceptual and adversarial terms: the reconstruction error (L1 or squared, mean
    over pixel values) of the decoded posterior sample, plus ``kl_weight`` times the KL divergence of the posterior
    from a standard normal, summed over the latent values and divided by the number of pixel values (so
    ``kl_weight`` weighs the two sums over an image, as in LDM). The posterior sample of each image depends only on
    ``(seed, epoch, image index)``, so a fit resumed with ``--ckpt_path`` ends as an uninterrupted one. EMA weights
    with warm-up, checkpointed and exported as in :class:`~lightning_fair.pretraining.DiffusionPretraining`.

    At the end of ``fit`` the EMA autoencoder is written with ``save_pretrained`` into ``output_dir``
    (``config.json``, ``diffusion_pytorch_model.safetensors``), its ``scaling_factor`` set as Stable Diffusion's:
    one over the standard deviation of the latents (posterior means) of up to ``scaling_images`` training images.

    Args:
        output_dir: folder the trained autoencoder is written to (replaced atomically).
        image_size: side of the square training images.
        in_channels: image channels.
        latent_channels: channels of the latents.
        block_out_channels: channels of each resolution level; the latents are ``2 ** (levels - 1)`` times smaller.
        layers_per_block: ResNet layers per level (the decoder has one more).
        norm_num_groups: groups of the group norms (must divide every channel count).
        reconstruction_loss: ``l1`` or ``mse``.
        kl_weight: weight of the KL divergence against the reconstruction error (see above).
        scaling_images: training images whose latents set ``scaling_factor``.
        learning_rate: AdamW learning rate after warm-up.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up steps.
        ema_decay: largest decay of the exponential moving average of the weights.
        ema_inv_gamma: warm-up of the EMA decay: the step scale of its growth.
        ema_power: warm-up of the EMA decay: the exponent of its growth.
        seed: seed of the posterior sample drawn for each image.
    """

    def __init__(
        self,
        output_dir: str,
        image_size: int = 32,
        in_channels: int = 3,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 32,
        reconstruction_loss: Literal["l1", "mse"] = "l1",
        kl_weight: float = 1e-6,
        scaling_images: int = 2048,
        learning_rate: float = 4e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        ema_decay: float = 0.999,
        ema_inv_gamma: float = 1.0,
        ema_power: float = 0.75,
        seed: int = 0,
    ) -> None:
        check_group_norm(norm_num_groups, block_out_channels)
        if reconstruction_loss not in ("l1", "mse"):
            raise ValueError(f"Option 'reconstruction_loss' must be 'l1' or 'mse', got {reconstruction_loss!r}")
        check_ranges(positive={"scaling_images": scaling_images}, non_negative={"kl_weight": kl_weight})
        super().__init__(
            output_dir, image_size, learning_rate, weight_decay, warmup_steps, ema_decay, ema_inv_gamma, ema_power, seed
        )
        self.save_hyperparameters()
        self.reconstruction_loss = reconstruction_loss
        self.kl_weight = kl_weight
        self.scaling_images = scaling_images
        levels = len(block_out_channels)
        self.vae = AutoencoderKL(
            in_channels=in_channels,
            out_channels=in_channels,
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            sample_size=image_size,
        )
        self.average()

    @property
    def trained(self) -> nn.Module:
        """The autoencoder."""
        return self.vae

    def losses(self, vae: AutoencoderKL, images: Tensor, generators: list[torch.Generator]) -> dict[str, Tensor]:
        """Reconstruction error, KL divergence (per pixel value) and their weighted sum (``loss``).

        Image ``i`` draws its posterior sample from ``generators[i]``.
        """
        posterior = vae.encode(images).latent_dist
        noise = per_sample_randn(generators, tuple(posterior.mean.shape[1:]), images.device)
        reconstruction = vae.decode(posterior.mean + posterior.std * noise).sample
        if self.reconstruction_loss == "l1":
            error = F.l1_loss(reconstruction, images)
        else:
            error = F.mse_loss(reconstruction, images)
        kl = posterior.kl().mean() / images[0].numel()
        return {"loss": error + self.kl_weight * kl, "reconstruction": error, "kl": kl}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """The loss with the posterior samples of ``(seed, epoch, index)``."""
        generators = training_generators(self.seed, self.current_epoch, batch["index"])
        losses = self.losses(self.vae, batch["image"], generators)
        self.log("train/loss", losses["loss"], prog_bar=True)
        self.log("train/reconstruction", losses["reconstruction"])
        self.log("train/kl", losses["kl"])
        return losses["loss"]

    def validation_losses(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The loss and the reconstruction error of ``model``, posterior samples seeded by ``(seed, image index)``."""
        generators = sample_generators(self.seed, batch["index"], NOISE_STREAM)
        losses = self.losses(model, batch["image"], generators)
        return {"loss": losses["loss"], "reconstruction": losses["reconstruction"]}

    def write(self, folder: Path, model: nn.Module) -> None:
        """Writes ``model`` with ``save_pretrained``, its ``scaling_factor`` set from the training images if any."""
        data = self._trainer.datamodule if self._trainer is not None else None
        if isinstance(data, AttributeDataModule):
            images = unaugmented(data, "train", self.scaling_images)
            latents = encode(model, images, batch_size=256)
            model.register_to_config(scaling_factor=1.0 / latents.std().item())
        model.save_pretrained(folder, safe_serialization=True)


def unaugmented(data: LightningDataModule, split: str, limit: int | None = None) -> AttributeImageDataset:
    """The first ``limit`` images (all by default) of a split of ``data`` without random transforms (flips).

    Raises:
        ValueError: if ``data`` is not an :class:`~lightning_fair.data.base.AttributeDataModule`.
    """
    if not isinstance(data, AttributeDataModule):
        raise ValueError(
            f"Latent models train on an AttributeDataModule (images read by index), got {type(data).__name__}"
        )
    dataset = data.dataset(split)
    rows = slice(0, limit)
    return AttributeImageDataset(
        dataset.image_paths[rows],
        dataset.attributes[rows].numpy(),
        dataset.indices[rows].numpy(),
        data.transform(train=False),
    )


@torch.no_grad()
def encode(vae: AutoencoderKL, dataset: AttributeImageDataset, batch_size: int, mirrored: bool = False) -> Tensor:
    """The posterior means of the images of ``dataset`` (mirrored left-right with ``mirrored``), on the CPU."""
    device = next(vae.parameters()).device
    latents = []
    for batch in DataLoader(dataset, batch_size=batch_size):
        images = batch["image"].to(device)
        if mirrored:
            images = images.flip(-1)
        latents.append(vae.encode(images).latent_dist.mean.cpu())
    return torch.cat(latents)
