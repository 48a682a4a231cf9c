"""Guidance on the h-space of the frozen UNet: Distribution Guidance and its per-sample baseline."""

from lightning_fair.methods.hspace.distribution_guidance import DistributionGuidance
from lightning_fair.methods.hspace.guidance import HSpaceGuidance
from lightning_fair.methods.hspace.predictor import AttributeDistributionPredictor
from lightning_fair.methods.hspace.sample_guidance import HSpaceSampleGuidance

__all__ = ["AttributeDistributionPredictor", "DistributionGuidance", "HSpaceGuidance", "HSpaceSampleGuidance"]
