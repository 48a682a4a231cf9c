"""Frozen diffusion backbones: one contract, pixel and latent text-to-image implementations."""

from lightning_fair.backbones.base import AdapterInputs, Condition, DiffusionBackbone
from lightning_fair.backbones.latent import LatentTextToImageBackbone
from lightning_fair.backbones.loading import load_backbone
from lightning_fair.backbones.pixel import PixelBackbone

__all__ = [
    "AdapterInputs",
    "Condition",
    "DiffusionBackbone",
    "LatentTextToImageBackbone",
    "PixelBackbone",
    "load_backbone",
]
