"""Training models from scratch: a pixel UNet, a VAE, a latent text-to-image model over it, and a tiny CLIP."""

from lightning_fair.pretraining.clip import CLIPPretraining
from lightning_fair.pretraining.diffusion import DiffusionPretraining
from lightning_fair.pretraining.latent import LatentDiffusionPretraining
from lightning_fair.pretraining.vae import VAEPretraining

__all__ = ["CLIPPretraining", "DiffusionPretraining", "LatentDiffusionPretraining", "VAEPretraining"]
