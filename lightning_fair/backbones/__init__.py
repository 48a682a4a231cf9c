"""Frozen pretrained diffusion models."""

from lightning_fair.backbones.unet import FrozenUNet, UNetEncoding

__all__ = ["FrozenUNet", "UNetEncoding"]
