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
from lightning_fair.metrics.suite import ConditionResult, FairnessResult, FairnessSuite, QualityResult

__all__ = [
    "AttributeProportions",
    "ConditionResult",
    "DemographicParityGap",
    "FairnessDiscrepancy",
    "FairnessResult",
    "FairnessSuite",
    "FeatureDistance",
    "GroupedAccuracy",
    "PairwiseBiasScore",
    "QualityResult",
    "validate_distribution",
]
