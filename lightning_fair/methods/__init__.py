"""Debiasing methods over a frozen diffusion backbone, and backbone pretraining."""

from lightning_fair.methods.pretraining import DiffusionPretraining

__all__ = ["DiffusionPretraining"]
