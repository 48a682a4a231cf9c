"""Self-annotation by k-means, and the cluster draws that debias: data frequencies, uniform, or solved for a target."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score
from torch import Tensor


def fit_clusters(features: Tensor, num_clusters: int, seed: int) -> tuple[Tensor, Tensor]:
    """k-means on L2-normalised features (the same normalisation for fitting and assignment, unlike the official code).

    Returns:
        Centroids ``(K, D)`` and each image's cluster ``(N,)``.
    """
    if num_clusters > len(features):
        raise ValueError(
            f"Option 'num_clusters' ({num_clusters}) is larger than the number of training images ({len(features)})"
        )
    normalised = F.normalize(features.double(), dim=1).numpy()
    kmeans = KMeans(n_clusters=num_clusters, n_init=3, random_state=seed).fit(normalised)
    return torch.from_numpy(kmeans.cluster_centers_).float(), torch.from_numpy(kmeans.labels_).long()


def assign_clusters(features: Tensor, centroids: Tensor) -> Tensor:
    """The nearest centroid of each L2-normalised feature vector."""
    return torch.cdist(F.normalize(features.float(), dim=1), centroids.float()).argmin(dim=1)


def cluster_frequencies(assignments: Tensor, num_clusters: int) -> Tensor:
    """Share of the images in each cluster."""
    counts = torch.bincount(assignments, minlength=num_clusters).double()
    return counts / counts.sum()


def cluster_composition(assignments: Tensor, labels: Tensor, num_clusters: int, num_classes: int) -> Tensor:
    """``(K, C)``: the class distribution of each cluster's members (uniform for an empty cluster)."""
    counts = torch.zeros(num_clusters, num_classes, dtype=torch.float64)
    counts.index_put_((assignments, labels), torch.ones(len(labels), dtype=torch.float64), accumulate=True)
    sizes = counts.sum(dim=1, keepdim=True)
    return torch.where(sizes > 0, counts / sizes.clamp_min(1), 1.0 / num_classes)


def labelled_members(assignments: Tensor, num_clusters: int, per_cluster: int | None, seed: int) -> Tensor:
    """Positions of the members whose labels are read: all, or ``per_cluster`` of each cluster drawn with ``seed``."""
    if per_cluster is None:
        return torch.arange(len(assignments))
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cluster in range(num_clusters):
        members = torch.nonzero(assignments == cluster).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_cluster]])
    return torch.sort(torch.cat(chosen)).values


def solve_cluster_weights(
    compositions: list[Tensor], targets: list[Tensor], prior: Tensor
) -> tuple[Tensor, list[Tensor]]:
    """Cluster weights whose mixture carries the target distribution of every attribute, as close to ``prior``.

    Minimises ``||w - prior||^2`` over the simplex subject to ``composition_a^T w = target_a`` for every attribute
    ``a``; when the clusters cannot reach a target exactly, the squared distance to it is minimised instead (with a
    large weight) and the reached distributions are returned for the caller to report.

    Args:
        compositions: per attribute, ``(K, C_a)`` class distributions of the clusters.
        targets: per attribute, ``(C_a,)`` target distribution.
        prior: ``(K,)`` the weights to stay close to (e.g. the data frequencies).

    Returns:
        The weights ``(K,)`` and, per attribute, the distribution they carry.
    """
    matrices = [composition.double().numpy().T for composition in compositions]
    goals = [target.double().numpy() for target in targets]
    start = prior.double().numpy()

    def objective(weights: np.ndarray) -> float:
        miss = sum(float(np.sum((matrix @ weights - goal) ** 2)) for matrix, goal in zip(matrices, goals, strict=True))
        return float(np.sum((weights - start) ** 2)) + 1e4 * miss

    result = minimize(
        objective,
        start,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * len(start),
        constraints=[{"type": "eq", "fun": lambda weights: np.sum(weights) - 1.0}],
        options={"maxiter": 500, "ftol": 1e-12},
    )
    weights = np.clip(result.x, 0, None)
    weights = torch.from_numpy(weights / weights.sum())
    reached = [composition.double().T @ weights for composition in compositions]
    return weights, reached


def cluster_report(labels: dict[str, np.ndarray], assignments: np.ndarray, num_clusters: int) -> dict:
    """NMI of the clusters with each attribute of ``labels``, and each cluster's size and attribute shares."""
    composition = [
        {
            "cluster": cluster,
            "size": int((assignments == cluster).sum()),
            **{f"share_{name}": float(values[assignments == cluster].mean()) for name, values in labels.items()},
        }
        for cluster in range(num_clusters)
        if (assignments == cluster).any()
    ]
    nmi = {name: float(normalized_mutual_info_score(values, assignments)) for name, values in labels.items()}
    return {"nmi": nmi, "clusters": composition}
