"""torchmetrics metrics of fairness and of feature-space quality, exact under DDP."""

from lightning_fair.metrics.accuracy import GroupedAccuracy
from lightning_fair.metrics.distribution import validate_distribution
from lightning_fair.metrics.fairness import (
    AttributeProportions,
    DemographicParityGap,
    FairnessDiscrepancy,
    PairwiseBiasScore,
)
from lightning_fair.metrics.feature_distance import FeatureDistance

__all__ = [
    "AttributeProportions",
    "DemographicParityGap",
    "FairnessDiscrepancy",
    "FeatureDistance",
    "GroupedAccuracy",
    "PairwiseBiasScore",
    "validate_distribution",
]
