"""Self-annotation by k-means and density modes; the cluster draws: data, uniform, uniform over modes, or a target."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from sklearn.cluster import HDBSCAN, KMeans
from sklearn.decomposition import PCA
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


MODE_DIMENSIONS = 16


def find_modes(features: Tensor, min_share: float, seed: int) -> Tensor:
    """The density modes of the features: HDBSCAN's leaf clusters on their first principal components.

    k-means gives each region of the data clusters in proportion to its mass, so a uniform draw over k-means clusters
    carries the data's imbalance. HDBSCAN (Campello et al., 2013) finds the dense regions separated by sparse ones,
    however many images each holds; its ``leaf`` selection keeps the finest of them. The L2-normalised features are
    reduced to their first 16 principal components (density estimates fail in many dimensions).

    Args:
        features: ``(N, D)`` one row per image.
        min_share: the smallest mode, as a share of the images.
        seed: seed of the principal components' solver.

    Returns:
        Each image's mode ``(N,)``, ``-1`` for the images between modes.
    """
    normalised = F.normalize(features.double(), dim=1).numpy()
    dimensions = min(MODE_DIMENSIONS, *normalised.shape)
    reduced = PCA(dimensions, random_state=seed).fit_transform(normalised)
    smallest = max(2, round(min_share * len(normalised)))
    modes = HDBSCAN(min_cluster_size=smallest, cluster_selection_method="leaf", copy=True).fit(reduced).labels_
    if modes.max() < 0:
        raise ValueError(
            f"Option 'mode_min_share' ({min_share}): no density mode of at least {smallest} images was found among "
            f"{len(normalised)}; lower it"
        )
    return torch.from_numpy(modes).long()


def mode_balanced_weights(assignments: Tensor, modes: Tensor, num_clusters: int) -> Tensor:
    """Cluster draw weights that give every mode the same share: a mode drawn uniformly, then one of its images.

    Returns:
        ``(K,)`` the probability of each cluster, ``sum_m (1/M) * |mode m in cluster k| / |mode m|``; the images
        between modes take no part.
    """
    in_mode = modes >= 0
    counts = torch.zeros(int(modes.max()) + 1, num_clusters, dtype=torch.float64)
    counts.index_put_(
        (modes[in_mode], assignments[in_mode]), torch.ones(int(in_mode.sum()), dtype=torch.float64), accumulate=True
    )
    return (counts / counts.sum(dim=1, keepdim=True)).mean(dim=0)


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
