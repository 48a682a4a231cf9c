"""Training the backbones from scratch: a pixel UNet, a VAE, and a latent text-to-image model over it."""

from lightning_fair.pretraining.diffusion import DiffusionPretraining
from lightning_fair.pretraining.latent import LatentDiffusionPretraining
from lightning_fair.pretraining.vae import VAEPretraining

__all__ = ["DiffusionPretraining", "LatentDiffusionPretraining", "VAEPretraining"]
