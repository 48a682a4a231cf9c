"""Self-Guided Diffusion (Hu et al., CVPR 2023) over a frozen model: self-supervised clusters guide an adapter."""

from lightning_fair.methods.self_guidance.clusters import fit_clusters, solve_cluster_weights
from lightning_fair.methods.self_guidance.features import ClassifierFeatures, HSpaceFeatures, TimmFeatures
from lightning_fair.methods.self_guidance.method import ClusterEmbedding, SelfGuidance

__all__ = [
    "ClassifierFeatures",
    "ClusterEmbedding",
    "HSpaceFeatures",
    "SelfGuidance",
    "TimmFeatures",
    "fit_clusters",
    "solve_cluster_weights",
]
