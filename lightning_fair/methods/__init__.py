"""Debiasing methods over a frozen diffusion backbone, and backbone pretraining."""

from lightning_fair.methods.base import DebiasingMethod, method_registry
from lightning_fair.methods.plain import ConditionalSampling, PlainSampling
from lightning_fair.methods.pretraining import DiffusionPretraining

__all__ = ["ConditionalSampling", "DebiasingMethod", "DiffusionPretraining", "PlainSampling", "method_registry"]
