"""Checks of what a result depends on: is a backbone usable?"""

from lightning_fair.checks.backbone import CHECK_FILE, BackboneThresholds, BackboneVerdict, check_backbone

__all__ = ["CHECK_FILE", "BackboneThresholds", "BackboneVerdict", "check_backbone"]
