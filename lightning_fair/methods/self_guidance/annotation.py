"""Self-annotation of the training images: features, k-means clusters kept by dataset index, and their report."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from lightning_fair.data.base import AttributeDataModule
from lightning_fair.data.keyed_rows import KeyedRows, sharded_pass
from lightning_fair.methods.lifecycle.artifact_cache import SplitArtifact
from lightning_fair.methods.self_guidance.clusters import (
    cluster_frequencies,
    cluster_report,
    find_modes,
    fit_clusters,
    mode_balanced_weights,
)
from lightning_fair.methods.self_guidance.features import ClassifierFeatures, HSpaceFeatures, TimmFeatures

CLUSTERS = SplitArtifact("clusters", "clusters_file", "clusters.safetensors")


class SelfAnnotation:
    """The first stage of Self-Guidance's ``fit``: the clusters of the train split, read back or made and written.

    Features of the train split (``features``), k-means on them and their density modes, written to ``clusters_file``
    keyed by dataset index with the feature extractor and the split's fingerprint, and reused when present; the
    clusters' and the modes' NMI and composition against the data's attributes go to the log and a JSON beside the
    file, never into training.
    """

    def feature_extractor(self) -> nn.Module:
        """The configured feature extractor (built when the features are computed)."""
        if self.feature_kind == "hspace":
            return HSpaceFeatures(
                self.backbone, self.neutral_condition, self.sampler.add_noise, self.feature_timestep, self.seed
            )
        if self.feature_kind == "timm":
            return TimmFeatures(self.feature_model, self.feature_weights).to(self.device)
        return ClassifierFeatures(self.classifier, self.classifier_reference)

    def training_data(self) -> AttributeDataModule:
        """The DataModule of ``fit``."""
        return self.required_image_data()

    def clusters_path(self) -> Path:
        """``clusters_file``, or ``clusters.safetensors`` in the run's log folder."""
        return CLUSTERS.path(self.clusters_file, self.trainer)

    def on_fit_start(self) -> None:
        """Reads the clusters file, or extracts features, clusters them and writes it; keeps their draw weights."""
        super().on_fit_start()
        self.clusters = self.load_or_make_clusters()
        assignments = self.clusters.tensors["assignments"]
        self.cluster_frequencies.copy_(cluster_frequencies(assignments, self.num_clusters))
        self.mode_weights.copy_(mode_balanced_weights(assignments, self.clusters.tensors["modes"], self.num_clusters))

    def split_provenance(self, data: AttributeDataModule) -> dict[str, str]:
        """What the clusters of ``data``'s train split are tied to, whatever their features."""
        return CLUSTERS.provenance(
            self.backbone_reference, data, num_clusters=str(self.num_clusters), mode_min_share=str(self.mode_min_share)
        )

    def load_or_make_clusters(self) -> KeyedRows:
        """The clusters of the train split, read back (and checked) or made and written."""
        data = self.training_data()
        extractor = self.feature_extractor()
        provenance = {**self.split_provenance(data), "features": extractor.description}
        path = self.clusters_path()
        make = partial(self.make_clusters, data, extractor, provenance, path)
        return CLUSTERS.load_or_make("SelfGuidance", path, provenance, make, self.trainer)

    def make_clusters(
        self, data: AttributeDataModule, extractor: nn.Module, provenance: dict[str, str], path: Path
    ) -> tuple[KeyedRows, dict[str, Any], str]:
        """Features of the train split (shared among the processes), their k-means clusters, a report and a summary."""
        start = time.perf_counter()
        indices, features = sharded_pass(
            CLUSTERS.dataset(data),
            lambda batch: extractor(batch["image"], batch["index"]),
            self.feature_batch_size,
            self.device,
            self.trainer.global_rank,
            self.trainer.world_size,
        )
        features_seconds = time.perf_counter() - start
        start = time.perf_counter()
        _, assignments = fit_clusters(features, self.num_clusters, self.seed)
        kmeans_seconds = time.perf_counter() - start
        start = time.perf_counter()
        modes = find_modes(features, self.mode_min_share, self.seed)
        clusters = KeyedRows(indices, {"assignments": assignments, "modes": modes}, provenance)
        labels = {name: data.table.column(name)[indices.numpy()] for name in data.attributes}
        mode_weights = mode_balanced_weights(assignments, modes, self.num_clusters)
        report = {
            "images": len(indices),
            "features": extractor.description,
            "feature_dimension": features.shape[1],
            "features_seconds": features_seconds,
            "kmeans_seconds": kmeans_seconds,
            "modes_seconds": time.perf_counter() - start,
            **cluster_report(labels, assignments.numpy(), self.num_clusters),
            "modes": cluster_report(labels, modes.numpy(), int(modes.max()) + 1),
            "images_between_modes": int((modes < 0).sum()),
            "mode_weights": mode_weights.tolist(),
        }
        nmi = ", ".join(f"{name} {value:.3f}" for name, value in report["nmi"].items())
        shares = composition_line(report)
        summary = (
            f"SelfGuidance: {self.num_clusters} clusters of {len(indices)} images ({extractor.description}) in "
            f"{features_seconds:.1f} s (features) + {kmeans_seconds:.1f} s (k-means); "
            f"{len(report['modes']['clusters'])} density modes ({report['images_between_modes']} images between them), "
            f"cluster weights of a uniform draw over the modes {[round(w, 3) for w in report['mode_weights']]}; "
            f"written to {path}. "
            f"Against the data's attributes (log only, never used): NMI {nmi}; clusters {shares}; "
            f"modes {composition_line(report['modes'])}"
        )
        return clusters, report, summary


def composition_line(report: dict[str, Any]) -> str:
    """The sizes and attribute shares of a :func:`cluster_report`'s groups, on one line."""
    return "; ".join(
        f"{row['cluster']}: {row['size']} images, "
        + ", ".join(f"{key[6:]} {value:.2f}" for key, value in row.items() if key.startswith("share_"))
        for row in report["clusters"]
    )
