"""Labels generated images with an attribute classifier and reports fairness and quality metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric, SumMetric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from lightning_fair.callbacks.run_folder import run_folder
from lightning_fair.classifiers import load_classifier
from lightning_fair.data.base import AttributeDataModule
from lightning_fair.metrics import (
    AttributeProportions,
    DemographicParityGap,
    FairnessDiscrepancy,
    GroupedAccuracy,
    PairwiseBiasScore,
    validate_distribution,
)
from lightning_fair.metrics.quality import ClassifierFeatures, reference_features

CONFIDENCE = 0.9


class FairnessEvaluator(Callback):
    """Evaluates the images a method generates in ``test`` (or ``predict``).

    Each generated batch is labelled by the attribute classifier; at the end of the epoch every process
    computes the (synchronised, exact) metrics, they are logged under ``test/`` and written to
    ``metrics.json`` and ``metrics.md`` in the log directory:

    - ``fd``, ``fd_l1``, ``fd_kl``: distance of the predicted ``sensitive`` distribution to the target;
    - ``fd/<attribute>``: the same (L2) for each attribute of ``extra_targets`` (e.g. when several are balanced);
    - ``fd_given_<target>=<k>``: the same within each predicted class of ``target``;
    - ``dp_gap``: demographic-parity gap of ``target`` (class 1) across predicted ``sensitive`` groups;
    - ``bias_score``: InvDiff's pairwise bias score of ``sensitive``;
    - ``proportion/<attribute>=<k>`` for every attribute the classifier predicts;
    - ``confident/<sensitive>``: fraction of samples whose ``sensitive`` prediction has probability >= 0.9;
    - ``agreement/<attribute>`` and ``agreement/<attribute>=<k>``: for every attribute a method reports as a
      per-sample condition (e.g. the class drawn for conditional sampling, Attribute Switching's final class), the
      fraction of samples predicted as the requested class, overall and per requested class;
    - ``fid_cls`` and ``kid_cls`` (with ``kid_cls_std``): FID/KID in the classifier's feature space against
      the ``reference`` split (features cached in ``cache_dir``). Named after their features: they are not
      Inception FID.

    Args:
        classifier: an ``AttributeClassifier`` checkpoint, pretrained folder or shipped name.
        sensitive: the attribute to balance (one the classifier predicts).
        target: optional content attribute (for ``fd_given_*`` and ``dp_gap``).
        target_distribution: fair distribution of ``sensitive`` (uniform by default).
        reference: DataModule of real images for ``fid_cls``/``kid_cls`` (``None``: no quality metrics).
        reference_split: split of ``reference`` to compare with (a balanced one).
        kid_subset_size: images per KID subset (capped by the number of samples).
        cache_dir: where reference features are cached (default: ``<root of reference>/.cache``).
        extra_targets: further attributes to report FD for, with their target distributions.
    """

    def __init__(
        self,
        classifier: str,
        sensitive: str,
        target: str | None = None,
        target_distribution: list[float] | None = None,
        reference: AttributeDataModule | None = None,
        reference_split: str = "test",
        kid_subset_size: int = 256,
        cache_dir: str | None = None,
        extra_targets: dict[str, list[float]] | None = None,
    ) -> None:
        super().__init__()
        self.classifier_reference = classifier
        self.classifier = load_classifier(classifier)
        self.sensitive_column = self.classifier.attribute_index(sensitive)
        self.target_column = None if target is None else self.classifier.attribute_index(target)
        self.sensitive, self.target = sensitive, target
        num_sensitive = self.classifier.num_classes[self.sensitive_column]
        self.target_distribution = validate_distribution(target_distribution, num_sensitive).tolist()
        self.reference = reference
        self.reference_split = reference_split
        self.kid_subset_size = kid_subset_size
        self.cache_dir = cache_dir
        self.extra_targets = {
            name: validate_distribution(
                values, self.classifier.num_classes[self.classifier.attribute_index(name)], f"extra_targets.{name}"
            ).tolist()
            for name, values in (extra_targets or {}).items()
        }
        self.metrics = self._build_metrics()
        self.num_reference = 0
        self.results: dict[str, float] = {}

    def _build_metrics(self) -> nn.ModuleDict:
        classes = self.classifier.num_classes
        num_sensitive = classes[self.sensitive_column]
        metrics: dict[str, Metric] = {
            "fd": FairnessDiscrepancy(num_sensitive, self.target_distribution, "l2"),
            "fd_l1": FairnessDiscrepancy(num_sensitive, self.target_distribution, "l1"),
            "fd_kl": FairnessDiscrepancy(num_sensitive, self.target_distribution, "kl"),
            "bias_score": PairwiseBiasScore(num_sensitive),
            "confident": MeanMetric(),
            "num_samples": SumMetric(),
        }
        for column in range(len(self.classifier.attributes)):
            metrics[f"proportion_{column}"] = AttributeProportions(classes[column])
            metrics[f"agreement_{column}"] = GroupedAccuracy(1)
            metrics[f"agreement_by_class_{column}"] = GroupedAccuracy(classes[column])
        for name, target in self.extra_targets.items():
            column = self.classifier.attribute_index(name)
            metrics[f"fd_extra_{column}"] = FairnessDiscrepancy(classes[column], target, "l2")
        if self.target_column is not None:
            num_target = classes[self.target_column]
            metrics["fd_given_target"] = FairnessDiscrepancy(
                num_sensitive, self.target_distribution, "l2", num_groups=num_target
            )
            metrics["dp_gap"] = DemographicParityGap(num_target, num_sensitive, positive_class=1)
        if self.reference is not None:
            features = ClassifierFeatures(self.classifier)
            metrics["fid_cls"] = FrechetInceptionDistance(feature=features, reset_real_features=False)
            metrics["kid_cls"] = KernelInceptionDistance(
                feature=features, reset_real_features=False, subset_size=self.kid_subset_size
            )
        return nn.ModuleDict(metrics)

    def _start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.classifier.to(pl_module.device)
        backbone = pl_module.backbone
        self.classifier.expect_inputs(
            backbone.center_crop_fraction, f"the images of the backbone '{backbone.reference}'"
        )
        self.metrics.to(pl_module.device)
        for metric in self.metrics.values():
            metric.reset()
        if self.reference is None or self.num_reference:
            return  # the real features survive resets (reset_real_features=False)
        if trainer.is_global_zero:
            self.reference.prepare_data()
        trainer.strategy.barrier()
        dataset = self.reference.dataset(self.reference_split)
        cache = Path(self.cache_dir) if self.cache_dir else self.reference.root / ".cache"
        description = f"{self.reference.root.resolve()}:{self.reference_split}:{self.reference.image_size}"
        with self.classifier.inputs_from(self.reference.center_crop_fraction, f"the images of '{self.reference.root}'"):
            features = reference_features(self.classifier, dataset, description, cache).to(pl_module.device)
        self.num_reference = len(features)
        # Each process feeds its shard, so the summed (FID) and gathered (KID) states hold every image once.
        shard = features[trainer.global_rank :: trainer.world_size]
        self.metrics["fid_cls"].update(shard, real=True)
        self.metrics["kid_cls"].update(shard, real=True)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Loads the classifier on the device and the reference features."""
        self._start(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Loads the classifier on the device and the reference features."""
        self._start(trainer, pl_module)

    def update(self, images: Tensor, conditions: dict[str, Tensor] | None = None) -> None:
        """Labels a batch of generated images in [-1, 1] and updates every metric.

        Args:
            images: the generated batch.
            conditions: per-sample requested classes by name (as the method reports them); those named after an
                attribute of the classifier are compared with its predictions.
        """
        if len(images) == 0:
            return
        with torch.no_grad():
            probabilities = self.classifier.predict_proba(images)
        predictions = [p.argmax(dim=1) for p in probabilities.values()]
        sensitive_probabilities = list(probabilities.values())[self.sensitive_column]
        sensitive = predictions[self.sensitive_column]
        for name in ("fd", "fd_l1", "fd_kl", "bias_score"):
            self.metrics[name].update(sensitive)
        self.metrics["confident"].update((sensitive_probabilities.amax(dim=1) >= CONFIDENCE).float())
        self.metrics["num_samples"].update(len(images))
        for column, prediction in enumerate(predictions):
            self.metrics[f"proportion_{column}"].update(prediction)
            self._update_agreement(column, prediction, (conditions or {}).get(self.classifier.attributes[column]))
            if f"fd_extra_{column}" in self.metrics:
                self.metrics[f"fd_extra_{column}"].update(prediction)
        if self.target_column is not None:
            target = predictions[self.target_column]
            self.metrics["fd_given_target"].update(sensitive, groups=target)
            self.metrics["dp_gap"].update(target, groups=sensitive)
        if self.reference is not None:
            self.metrics["fid_cls"].update(images, real=False)
            self.metrics["kid_cls"].update(images, real=False)

    def _update_agreement(self, column: int, prediction: Tensor, requested: Tensor | None) -> None:
        """Counts predictions equal to the requested classes (an empty update where nothing was requested)."""
        if requested is None:
            prediction = requested = prediction[:0]
        requested = requested.to(prediction.device).long()
        self.metrics[f"agreement_{column}"].update(prediction, requested, torch.zeros_like(requested))
        self.metrics[f"agreement_by_class_{column}"].update(prediction, requested, requested)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Updates the metrics with the batch's images and the conditions they were generated with."""
        self.update(outputs["images"], outputs.get("conditions"))

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Updates the metrics with the batch's images and the conditions they were generated with."""
        self.update(outputs["images"], outputs.get("conditions"))

    def compute(self) -> dict[str, float]:
        """Synchronises and computes every metric (call it on every process)."""
        results: dict[str, float] = {}
        for name in ("fd", "fd_l1", "fd_kl", "bias_score"):
            results[name] = self.metrics[name].compute().item()
        for name in self.extra_targets:
            results[f"fd/{name}"] = self.metrics[f"fd_extra_{self.classifier.attribute_index(name)}"].compute().item()
        results[f"confident/{self.sensitive}"] = self.metrics["confident"].compute().item()
        num_samples = int(self.metrics["num_samples"].compute().item())
        for column, attribute in enumerate(self.classifier.attributes):
            proportions = self.metrics[f"proportion_{column}"].compute()
            for value, proportion in enumerate(proportions.tolist()):
                results[f"proportion/{attribute}={value}"] = proportion
            agreement = self.metrics[f"agreement_{column}"].compute().item()
            if not math.isnan(agreement):  # the same on every process: the counts are synchronised
                results[f"agreement/{attribute}"] = agreement
                by_class = self.metrics[f"agreement_by_class_{column}"].compute().tolist()
                for value, fraction in enumerate(by_class):
                    results[f"agreement/{attribute}={value}"] = fraction
        if self.target_column is not None:
            for value, fd in enumerate(self.metrics["fd_given_target"].compute().tolist()):
                results[f"fd_given_{self.target}={value}"] = fd
            results["dp_gap"] = self.metrics["dp_gap"].compute().item()
        if self.reference is not None:
            results["fid_cls"] = self.metrics["fid_cls"].compute().item()
            kid = self.metrics["kid_cls"]
            kid.subset_size = max(2, min(self.kid_subset_size, num_samples, self.num_reference))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                mean, std = kid.compute()
            results["kid_cls"], results["kid_cls_std"] = mean.item(), std.item()
        results["num_samples"] = num_samples
        return results

    def _finish(self, trainer: Trainer, pl_module: LightningModule, log: bool) -> None:
        results = self.compute()
        if log:
            for name, value in results.items():
                pl_module.log(f"test/{name}", float(value), sync_dist=True)  # equal on all ranks already
        folder = run_folder(trainer)
        if trainer.is_global_zero:
            self.write(results, folder, type(pl_module).__name__)
        self.results = results

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Computes, logs and writes the metrics."""
        self._finish(trainer, pl_module, log=True)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Computes and writes the metrics (``predict`` does not log)."""
        self._finish(trainer, pl_module, log=False)

    def write(self, results: dict[str, float], folder: Path, method: str) -> None:
        """Writes ``metrics.json`` and a Markdown table ``metrics.md`` into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        record = {
            "method": method,
            "classifier": self.classifier_reference,
            "sensitive": self.sensitive,
            "target": self.target,
            "target_distribution": self.target_distribution,
            "extra_targets": self.extra_targets,
            "metrics": results,
        }
        lines = [
            f"# {method}: fairness of {results['num_samples']} generated images",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [
            f"| {name} | {value:.4f} |"
            if isinstance(value, float) and not math.isnan(value)
            else f"| {name} | {value} |"
            for name, value in results.items()
        ]
        for name, text in (
            ("metrics.json", json.dumps(record, indent=2) + "\n"),
            ("metrics.md", "\n".join(lines) + "\n"),
        ):
            temporary = folder / f".{name}.tmp"
            temporary.write_text(text)
            temporary.replace(folder / name)
