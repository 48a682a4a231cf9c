"""Debiasing methods over a frozen diffusion backbone, and backbone pretraining."""

from lightning_fair.methods.adp import AttributeDistributionPredictor
from lightning_fair.methods.attribute_switching import AttributeSwitching
from lightning_fair.methods.base import DebiasingMethod, method_registry
from lightning_fair.methods.conditions import Prompts
from lightning_fair.methods.distribution_guidance import DistributionGuidance, HSpaceGuidance, HSpaceSampleGuidance
from lightning_fair.methods.invdiff import InvDiff
from lightning_fair.methods.latent_pretraining import LatentDiffusionPretraining
from lightning_fair.methods.plain import ConditionalSampling, PlainSampling
from lightning_fair.methods.pretraining import DiffusionPretraining
from lightning_fair.methods.self_guidance import SelfGuidance
from lightning_fair.methods.vae_pretraining import VAEPretraining

__all__ = [
    "AttributeDistributionPredictor",
    "AttributeSwitching",
    "ConditionalSampling",
    "DebiasingMethod",
    "DiffusionPretraining",
    "DistributionGuidance",
    "HSpaceGuidance",
    "HSpaceSampleGuidance",
    "InvDiff",
    "LatentDiffusionPretraining",
    "PlainSampling",
    "Prompts",
    "SelfGuidance",
    "VAEPretraining",
    "method_registry",
]
