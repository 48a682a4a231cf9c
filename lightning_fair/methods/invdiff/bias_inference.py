"""InvDiff's first stage: the bias groups of the train split, inferred without labels and kept by dataset index."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_fair.data.base import AttributeDataModule
from lightning_fair.data.keyed_rows import KeyedRows, sharded_pass
from lightning_fair.methods.invdiff.grouper import (
    cluster_groups,
    group_agreement,
    group_summary,
    image_losses,
    minority_share,
    optimise_group_weights,
    per_sample_losses,
    tail_groups,
)
from lightning_fair.methods.lifecycle.artifact_cache import SplitArtifact
from lightning_fair.methods.self_guidance.features import HSpaceFeatures

GROUPS = SplitArtifact("groups", "groups_file", "groups.safetensors")


class BiasInference:
    """The groups of :class:`~lightning_fair.methods.invdiff.method.InvDiff`: read from ``groups_file``, or inferred.

    One pass of the frozen model over the train split, then the soft group weights ``W`` that spread the per-group
    mean losses (or hard groups: each class's loss tail, or each class's feature clusters); ``W`` is written keyed by
    dataset index with the backbone and the split's fingerprint, and a report of its agreement with the hidden groups
    (never used in training) beside it. ``groups: labels`` uses the true groups instead.
    """

    def on_fit_start(self) -> None:
        """Reads the groups file, or infers the groups and writes it (every process gets the same groups)."""
        super().on_fit_start()
        if self.groups == "inferred":
            self.assignment = self.load_or_infer_groups()

    def fit_diagnostics(self) -> list[Path]:
        """The inferred groups' report (agreement with the hidden groups, sizes) next to ``groups_file``."""
        return [GROUPS.report(self.groups_file, self.trainer)] if self.groups == "inferred" else []

    def groups_path(self) -> Path:
        """``groups_file``, or ``groups.safetensors`` in the run's log folder."""
        return GROUPS.path(self.groups_file, self.trainer)

    def load_or_infer_groups(self) -> KeyedRows:
        """The groups of the train split: read back (and checked) from ``groups_file``, or inferred and written."""
        data = self.training_data()
        settings = {"num_groups": str(self.num_groups)} if self.grouper != "tail" else {}
        if self.grouper == "tail":
            settings["tail_share"] = str(self.grouper_tail_share)
        if self.grouper == "clusters":
            settings["feature_timestep"] = str(self.grouper_feature_timestep)
        provenance = GROUPS.provenance(
            self.backbone_reference, data, grouper=self.grouper, normalisation=self.grouper_normalisation, **settings
        )
        path = self.groups_path()
        make = partial(self.infer_groups, data, provenance, path)
        return GROUPS.load_or_make("InvDiff", path, provenance, make, self.trainer)

    def infer_groups(
        self, data: AttributeDataModule, provenance: dict[str, str], path: Path
    ) -> tuple[KeyedRows, dict[str, Any], str]:
        """The frozen model's loss of every train image, the group weights that spread it, a report and a summary."""
        start = time.perf_counter()
        indices, timestep_losses = per_sample_losses(
            self.backbone,
            GROUPS.dataset(data),
            lambda attributes: self.class_condition(self.labels_of(attributes)),
            self.sampler.add_noise,
            self.seed,
            self.grouper_timesteps,
            self.grouper_batch_size,
            self.device,
            self.trainer.global_rank,
            self.trainer.world_size,
        )
        pass_seconds = time.perf_counter() - start
        start = time.perf_counter()
        losses = image_losses(timestep_losses, self.grouper_normalisation)
        classes = torch.as_tensor(data.table.column(self.condition_attribute)[indices.numpy()])
        num_classes = data.num_classes[data.attributes.index(self.condition_attribute)]
        if self.grouper == "tail":
            weights = tail_groups(losses, classes, num_classes, self.grouper_tail_share)
        elif self.grouper == "clusters":
            features = self.image_features(data, indices)
            weights = cluster_groups(features, classes, num_classes, self.num_groups, self.seed)
        else:
            weights = optimise_group_weights(
                losses,
                self.num_groups,
                self.grouper_steps,
                self.grouper_learning_rate,
                self.grouper_min_weight,
                self.seed,
            )
        assignment = KeyedRows(indices, {"weights": weights, "losses": losses}, provenance)
        true_groups, _ = self.true_groups(data, indices.numpy())
        report = {
            "images": len(indices),
            **group_agreement(weights, true_groups),
            "minority_share": minority_share(
                weights, true_groups, data.num_classes[data.attributes.index(data.sensitive)]
            ),
            **group_summary(weights, losses),
            "pass_seconds": pass_seconds,
            "weights_seconds": time.perf_counter() - start,
            "processes": self.trainer.world_size,
        }
        summary = (
            f"InvDiff: inferred {weights.shape[1]} groups ({self.grouper}) of {len(indices)} images in "
            f"{pass_seconds:.1f} s (pass) + "
            f"{report['weights_seconds']:.1f} s (weights); agreement with the hidden groups: NMI "
            f"{report['nmi']:.3f}, purity {report['purity']:.3f}; the bias-conflicting images' share of the group loss "
            f"{report['minority_share']['share']:.3f} against their {report['minority_share']['images']:.3f} of the "
            f"images (log only); written to {path}"
        )
        return assignment, report, summary

    def image_features(self, data: AttributeDataModule, indices: Tensor) -> Tensor:
        """The frozen model's h-space of every train image, rows in the order of ``indices``.

        Read under the neutral condition (null label, neutral prompt) as Self-Guidance reads it, so that the class
        does not dominate the features; under each image's own class for a class-conditional model without a null
        label.
        """
        extractor = HSpaceFeatures(
            self.backbone, self.neutral_condition, self.sampler.add_noise, self.grouper_feature_timestep, self.seed
        )
        own_class = self.backbone.conditioning == "class" and self.backbone.null_label is None

        def features(batch: dict[str, Tensor]) -> Tensor:
            condition = self.class_condition(self.labels_of(batch["attributes"])) if own_class else None
            return extractor(batch["image"], batch["index"], condition)

        order, rows = sharded_pass(
            GROUPS.dataset(data),
            features,
            self.grouper_batch_size,
            self.device,
            self.trainer.global_rank,
            self.trainer.world_size,
        )
        if not torch.equal(order, indices):
            raise RuntimeError("InvDiff: the feature pass and the loss pass saw different images")
        return rows

    def group_weights(self, batch: dict[str, Tensor]) -> Tensor:
        """The batch's group rows: its rows of the inferred ``W``, or one-hot true groups."""
        if self.groups == "labels":
            data = self.training_data()
            groups, count = self.true_groups(data, batch["index"].cpu().numpy())
            return F.one_hot(torch.as_tensor(groups), count).to(self.device)
        if self.assignment is None:
            raise RuntimeError("InvDiff's groups are read at the start of fit")
        return self.assignment.rows("weights", batch["index"]).to(self.device)
