"""Subsampling a split to a given ratio between (target, sensitive) groups."""

from __future__ import annotations

import numpy as np


def group_ids(target: np.ndarray, sensitive: np.ndarray, num_sensitive: int) -> np.ndarray:
    """Returns the group of each sample: ``target * num_sensitive + sensitive`` (target-major order)."""
    return target * num_sensitive + sensitive


def resample_to_ratio(groups: np.ndarray, ratio: list[float], seed: int) -> np.ndarray:
    """Picks the largest subset, without replacement, whose group counts follow ``ratio``.

    Args:
        groups: group id of each sample, in ``0..len(ratio)-1``.
        ratio: relative size of each group, all positive.
        seed: seed of the random choice within each group.

    Returns:
        Sorted indices of the kept samples.
    """
    weights = np.asarray(ratio, dtype=np.float64)
    counts = np.bincount(groups, minlength=len(weights))
    if len(counts) != len(weights):
        raise ValueError(f"Found group ids up to {len(counts) - 1} but the ratio has {len(weights)} entries")
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise ValueError(f"Cannot resample to ratio {list(ratio)}: groups {empty.tolist()} have no samples")
    scale = np.min(counts / weights)
    keep_counts = np.floor(scale * weights + 1e-9).astype(np.int64)
    rng = np.random.default_rng(seed)
    kept = [
        rng.choice(np.flatnonzero(groups == group), size=keep, replace=False) for group, keep in enumerate(keep_counts)
    ]
    return np.sort(np.concatenate(kept))
