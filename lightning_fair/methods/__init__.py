"""Debiasing methods over a frozen diffusion backbone."""

from lightning_fair.methods.attribute_switching import AttributeSwitching
from lightning_fair.methods.base import DebiasingMethod, method_registry
from lightning_fair.methods.concept_editing import UnifiedConceptEditing
from lightning_fair.methods.conditions import Prompts
from lightning_fair.methods.fair_diffusion import FairDiffusion
from lightning_fair.methods.hspace import (
    AttributeDistributionPredictor,
    DistributionGuidance,
    HSpaceGuidance,
    HSpaceSampleGuidance,
)
from lightning_fair.methods.invdiff import InvDiff
from lightning_fair.methods.plain import ConditionalSampling, PlainSampling
from lightning_fair.methods.self_guidance import SelfGuidance

__all__ = [
    "AttributeDistributionPredictor",
    "AttributeSwitching",
    "ConditionalSampling",
    "DebiasingMethod",
    "DistributionGuidance",
    "FairDiffusion",
    "HSpaceGuidance",
    "HSpaceSampleGuidance",
    "InvDiff",
    "PlainSampling",
    "Prompts",
    "SelfGuidance",
    "UnifiedConceptEditing",
    "method_registry",
]
