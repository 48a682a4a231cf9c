"""InvDiff (Hou et al., 2024): label-free bias groups and a group-invariant delta UNet beside the frozen model."""

from lightning_fair.methods.invdiff.grouper import optimise_group_weights, per_sample_losses
from lightning_fair.methods.invdiff.method import InvDiff
from lightning_fair.methods.invdiff.objective import group_invariance_loss, mix_eps

__all__ = [
    "InvDiff",
    "group_invariance_loss",
    "mix_eps",
    "optimise_group_weights",
    "per_sample_losses",
]
