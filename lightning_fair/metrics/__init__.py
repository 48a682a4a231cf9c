"""torchmetrics metrics of fairness, exact under DDP."""

from lightning_fair.metrics.accuracy import GroupedAccuracy
from lightning_fair.metrics.distribution import validate_distribution
from lightning_fair.metrics.fairness import (
    AttributeProportions,
    DemographicParityGap,
    FairnessDiscrepancy,
    PairwiseBiasScore,
)

__all__ = [
    "AttributeProportions",
    "DemographicParityGap",
    "FairnessDiscrepancy",
    "GroupedAccuracy",
    "PairwiseBiasScore",
    "validate_distribution",
]
