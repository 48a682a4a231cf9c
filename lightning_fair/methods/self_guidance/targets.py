"""Cluster draws that carry a target: weights solved from the classifier's labels of the clusters' members."""

from __future__ import annotations

import time

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import Subset

from lightning_fair.data.keyed_rows import sharded_pass
from lightning_fair.methods.self_guidance.annotation import CLUSTERS
from lightning_fair.methods.self_guidance.clusters import (
    cluster_composition,
    cluster_frequencies,
    labelled_members,
    solve_cluster_weights,
)


class TargetClusterWeights:
    """The cluster draws of Self-Guidance at sampling: ``uniform``, ``data``, ``modes`` or ``target``.

    With ``target``, the weights are solved when sampling starts, from the clusters file, the classifier's labels of
    the members and ``target_distributions``: labels of a few images, and no retraining.
    """

    def on_test_start(self) -> None:
        """Solves the target cluster weights (the clusters file, the classifier, the configured targets)."""
        super().on_test_start()
        self._draw_weights = self.solve_target_weights() if self.cluster_distribution == "target" else None

    def on_predict_start(self) -> None:
        """Solves the target cluster weights (the clusters file, the classifier, the configured targets)."""
        super().on_predict_start()
        self._draw_weights = self.solve_target_weights() if self.cluster_distribution == "target" else None

    def draw_weights(self) -> Tensor:
        """The probability of each cluster at sampling (see ``cluster_distribution``)."""
        if self.cluster_distribution == "uniform":
            return torch.full((self.num_clusters,), 1.0 / self.num_clusters, dtype=torch.float64)
        if self.cluster_distribution == "data":
            return self.cluster_frequencies.double().cpu()
        if self.cluster_distribution == "modes":
            return self.mode_weights.double().cpu()
        if self._draw_weights is None:
            raise RuntimeError("SelfGuidance's target cluster weights are solved when sampling starts")
        return self._draw_weights

    def solve_target_weights(self) -> Tensor:
        """Cluster weights whose members' classifier labels carry ``target_distributions``, near the data's."""
        names = sorted(self.target_distributions)
        compositions = self.cluster_compositions(names)
        targets = [torch.as_tensor(self.target_distributions[name], dtype=torch.float64) for name in names]
        weights, reached = solve_cluster_weights(compositions, targets, self.cluster_frequencies.double().cpu())
        carried = ", ".join(
            f"{name} {[round(p, 3) for p in r.tolist()]}" for name, r in zip(names, reached, strict=True)
        )
        rank_zero_info(
            f"SelfGuidance: cluster weights {[round(w, 3) for w in weights.tolist()]} solved for the targets; "
            f"the clusters carry {carried}"
        )
        return weights

    def cluster_compositions(self, names: list[str]) -> list[Tensor]:
        """Per attribute of ``names``, the ``(K, C)`` class shares of each cluster's members, by the classifier.

        The members are those of ``clusters_file`` (at most ``labels_per_cluster`` of each, drawn with the seed), so
        a new target needs labels of a few images and no retraining.
        """
        data = self.training_data()
        data.setup("fit")
        path = self.clusters_path()
        if not path.exists():
            raise ValueError(f"Option 'clusters_file': '{path}' does not exist; cluster_distribution='target' reads it")
        clusters = CLUSTERS.read(path, self.split_provenance(data))
        trained_on = self.cluster_frequencies.double().cpu()
        if not torch.allclose(cluster_frequencies(clusters.tensors["assignments"], self.num_clusters), trained_on):
            raise ValueError(
                f"Option 'clusters_file': '{path}' holds other clusters than the embedding was trained on "
                f"(their sizes differ from the checkpoint's {[round(share, 3) for share in trained_on.tolist()]})"
            )
        dataset = CLUSTERS.dataset(data)
        assignments = clusters.rows("assignments", torch.as_tensor(dataset.indices))
        members = labelled_members(assignments, self.num_clusters, self.labels_per_cluster, self.seed)
        columns = [self.classifier.attribute_index(name) for name in names]

        def labels(batch: dict[str, Tensor]) -> Tensor:
            probabilities = self.classifier.predict_proba(batch["image"])
            return torch.stack([probabilities[name].argmax(dim=1) for name in names], dim=1)

        start = time.perf_counter()
        indices, predicted = sharded_pass(
            Subset(dataset, members.tolist()),
            labels,
            self.feature_batch_size,
            self.device,
            self.trainer.global_rank,
            self.trainer.world_size,
        )
        member_clusters = clusters.rows("assignments", indices)
        compositions = [
            cluster_composition(
                member_clusters, predicted[:, offset], self.num_clusters, self.classifier.num_classes[c]
            )
            for offset, c in enumerate(columns)
        ]
        rank_zero_info(
            f"SelfGuidance: the classifier labelled {len(indices)} cluster members "
            f"in {time.perf_counter() - start:.1f} s"
            + "".join(
                f"; {name} shares per cluster {[round(float(row[-1]), 3) for row in composition]}"
                for name, composition in zip(names, compositions, strict=True)
            )
        )
        return compositions
