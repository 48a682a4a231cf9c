"""Labels generated images with an attribute classifier and reports fairness and quality metrics."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import Metric, SumMetric

from lightning_fair.callbacks.run_folder import run_folder
from lightning_fair.classifiers import load_classifier
from lightning_fair.data.base import AttributeDataModule
from lightning_fair.metrics import (
    AttributeProportions,
    DemographicParityGap,
    FairnessDiscrepancy,
    FeatureDistance,
    GroupedAccuracy,
    PairwiseBiasScore,
    validate_distribution,
)
from lightning_fair.metrics.quality import reference_features
from lightning_fair.utils.files import write_text_atomically

CONFIDENCE = 0.9
DP_POSITIVE_CLASS = 1
NO_SAMPLES = "no sample was generated"


class FairnessEvaluator(Callback):
    """Evaluates the images a method generates in ``test`` (or ``predict``).

    Each generated batch is labelled by the attribute classifier; at the end of the epoch every process
    computes the (synchronised, exact) metrics, the same whatever the number of processes; they are logged under
    ``test/`` and written to ``metrics.json`` and ``metrics.md`` in the log directory. A metric the samples
    cannot determine (e.g. ``dp_gap`` when no sample is predicted in the target's class 1) is ``null``, with a
    warning naming why:

    - ``fd``, ``fd_l1``, ``fd_kl``: distance of the predicted ``sensitive`` distribution to the target;
    - ``fd/<attribute>``: the same (L2) for each attribute of ``extra_targets`` (e.g. when several are balanced);
    - ``fd_given_<target>=<k>``: the same within each predicted class of ``target``;
    - ``dp_gap``: demographic-parity gap of ``target`` (class 1) across predicted ``sensitive`` groups;
    - ``bias_score``: InvDiff's pairwise bias score of ``sensitive``;
    - ``bias_score/<attribute>=<k>`` and ``bias_score_by/<attribute>`` (their mean over the requested classes): the
      same within the samples a method requested class ``k`` of ``attribute`` for, for every attribute it reports
      as a per-sample condition (InvDiff's score per prompt or class);
    - ``proportion/<attribute>=<k>`` for every attribute the classifier predicts;
    - ``confident/<sensitive>``: fraction of samples whose ``sensitive`` prediction has probability >= 0.9;
    - ``agreement/<attribute>`` and ``agreement/<attribute>=<k>``: for every attribute a method reports as a
      per-sample condition (e.g. the class drawn for conditional sampling, Attribute Switching's final class), the
      fraction of samples predicted as the requested class, overall and per requested class;
    - ``fid_cls`` and ``kid_cls`` (with ``kid_cls_std``): FID/KID in the classifier's feature space against
      the whole ``reference`` split (features cached in ``cache_dir``, keyed on the image files, the transform
      and the classifier), over the samples in index order (see ``FeatureDistance``). Named after their
      features: they are not Inception FID.

    Args:
        classifier: an ``AttributeClassifier`` checkpoint, pretrained folder or shipped name.
        sensitive: the attribute to balance (one the classifier predicts).
        target: optional content attribute (for ``fd_given_*`` and ``dp_gap``).
        target_distribution: fair distribution of ``sensitive`` (uniform by default).
        reference: DataModule of real images for ``fid_cls``/``kid_cls`` (``None``: no quality metrics).
        reference_split: split of ``reference`` to compare with (a balanced one).
        kid_subset_size: images per KID subset (capped by the number of generated and of reference images).
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
        if kid_subset_size < 2:
            raise ValueError(f"Option 'kid_subset_size' must be at least 2, got {kid_subset_size}")
        self.kid_subset_size = kid_subset_size
        self.cache_dir = cache_dir
        self.extra_targets = {
            name: validate_distribution(
                values, self.classifier.num_classes[self.classifier.attribute_index(name)], f"extra_targets.{name}"
            ).tolist()
            for name, values in (extra_targets or {}).items()
        }
        self.metrics = self._build_metrics()
        self.results: dict[str, Any] = {}

    def _build_metrics(self) -> nn.ModuleDict:
        """The metrics that need no reference features (``quality`` is added when they are loaded)."""
        classes = self.classifier.num_classes
        num_sensitive = classes[self.sensitive_column]
        metrics: dict[str, Metric] = {
            "fd": FairnessDiscrepancy(num_sensitive, self.target_distribution, "l2"),
            "fd_l1": FairnessDiscrepancy(num_sensitive, self.target_distribution, "l1"),
            "fd_kl": FairnessDiscrepancy(num_sensitive, self.target_distribution, "kl"),
            "bias_score": PairwiseBiasScore(num_sensitive),
            "confident": AttributeProportions(2),  # class 1: confident
            "num_samples": SumMetric(),
        }
        for column in range(len(self.classifier.attributes)):
            metrics[f"proportion_{column}"] = AttributeProportions(classes[column])
            metrics[f"agreement_{column}"] = GroupedAccuracy(1)
            metrics[f"agreement_by_class_{column}"] = GroupedAccuracy(classes[column])
            metrics[f"bias_by_condition_{column}"] = PairwiseBiasScore(
                num_sensitive, num_groups=classes[column], per_group=True
            )
        for name, target in self.extra_targets.items():
            column = self.classifier.attribute_index(name)
            metrics[f"fd_extra_{column}"] = FairnessDiscrepancy(classes[column], target, "l2")
        if self.target_column is not None:
            num_target = classes[self.target_column]
            metrics["fd_given_target"] = FairnessDiscrepancy(
                num_sensitive, self.target_distribution, "l2", num_groups=num_target
            )
            metrics["dp_gap"] = DemographicParityGap(num_target, num_sensitive, positive_class=DP_POSITIVE_CLASS)
        return nn.ModuleDict(metrics)

    def _reference_features(self) -> Tensor:
        """Classifier features of the whole ``reference`` split (from the cache when it holds them)."""
        self.reference.prepare_data()
        dataset = self.reference.dataset(self.reference_split)
        cache = Path(self.cache_dir) if self.cache_dir else self.reference.root / ".cache"
        with self.classifier.inputs_from(self.reference.center_crop_fraction, f"the images of '{self.reference.root}'"):
            return reference_features(self.classifier, dataset, cache)

    def _start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.classifier.to(pl_module.device)
        self.classifier.expect_generated(pl_module)
        if self.reference is not None and "quality" not in self.metrics:
            # Computed once, by one process: every process then holds the very same reference features.
            features = self._reference_features() if trainer.is_global_zero else None
            features = trainer.strategy.broadcast(features, src=0)
            self.metrics["quality"] = FeatureDistance(features, self.kid_subset_size)
        self.metrics.to(pl_module.device)
        for metric in self.metrics.values():
            metric.reset()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Loads the classifier on the device and the reference features."""
        self._start(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Loads the classifier on the device and the reference features."""
        self._start(trainer, pl_module)

    def update(
        self, images: Tensor, conditions: dict[str, Tensor] | None = None, indices: Tensor | None = None
    ) -> None:
        """Labels a batch of generated images in [-1, 1] and updates every metric.

        Args:
            images: the generated batch.
            conditions: per-sample requested classes by name (as the method reports them); those named after an
                attribute of the classifier are compared with its predictions.
            indices: the global sample index of each image, which orders the samples of ``fid_cls``/``kid_cls``
                whatever the split across processes (default: the order of the updates, single process only).
        """
        if len(images) == 0:
            return
        with torch.no_grad():
            probabilities = self.classifier.predict_proba(images)
            features = self.classifier.features(images) if "quality" in self.metrics else None
        predictions = [p.argmax(dim=1) for p in probabilities.values()]
        sensitive_probabilities = list(probabilities.values())[self.sensitive_column]
        sensitive = predictions[self.sensitive_column]
        for name in ("fd", "fd_l1", "fd_kl", "bias_score"):
            self.metrics[name].update(sensitive)
        self.metrics["confident"].update((sensitive_probabilities.amax(dim=1) >= CONFIDENCE).long())
        self.metrics["num_samples"].update(len(images))
        for column, prediction in enumerate(predictions):
            self.metrics[f"proportion_{column}"].update(prediction)
            requested = (conditions or {}).get(self.classifier.attributes[column])
            self._update_agreement(column, prediction, requested)
            conditioned = sensitive if requested is not None else sensitive[:0]
            groups = requested.to(sensitive.device).long() if requested is not None else conditioned
            self.metrics[f"bias_by_condition_{column}"].update(conditioned, groups=groups)
            if f"fd_extra_{column}" in self.metrics:
                self.metrics[f"fd_extra_{column}"].update(prediction)
        if self.target_column is not None:
            target = predictions[self.target_column]
            self.metrics["fd_given_target"].update(sensitive, groups=target)
            self.metrics["dp_gap"].update(target, groups=sensitive)
        if features is not None:
            self.metrics["quality"].update(features, indices)

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
        """Updates the metrics with the batch's images, their sample indices and the conditions they were given."""
        self.update(outputs["images"], outputs.get("conditions"), outputs["index"])

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Updates the metrics with the batch's images, their sample indices and the conditions they were given."""
        self.update(outputs["images"], outputs.get("conditions"), outputs["index"])

    def compute(self) -> dict[str, Any]:
        """Synchronises and computes every metric (call it on every process: each makes the same collective calls).

        A metric the generated samples cannot determine (e.g. ``dp_gap`` when no sample was predicted in the
        target's class 1) is ``None``, ``null`` in ``metrics.json``, with a warning naming why; so is an infinite
        ``fd_kl``. ``num_samples`` is an int.
        """
        with warnings.catch_warnings():  # torchmetrics' warning of a process without samples: explained below
            warnings.filterwarnings("ignore", message=r".*called before the ``update`` method")
            num_samples = int(self.metrics["num_samples"].compute().item())
            values, reasons = self._values(num_samples)
        results: dict[str, Any] = {}
        unreported: dict[str, list[str]] = {}  # names of the metrics that cannot be reported, by explanation
        for name, value in values.items():
            results[name] = value if math.isfinite(value) else None
            if results[name] is None:
                explanation = f"{'undefined' if math.isnan(value) else 'infinite'}: "
                explanation += reasons[name] if num_samples else NO_SAMPLES
                unreported.setdefault(explanation, []).append(name)
        for explanation, names in unreported.items():
            verb = "is" if len(names) == 1 else "are"
            rank_zero_warn(f"{', '.join(names)} {verb} {explanation}; null in metrics.json")
        return {**results, "num_samples": num_samples}

    def _values(self, num_samples: int) -> tuple[dict[str, float], dict[str, str]]:
        """Every metric's value (``nan`` where undefined, ``inf`` for an infinite ``fd_kl``) and what makes it so."""
        results: dict[str, float] = {}
        reasons: dict[str, str] = {}

        def add(name: str, value: float, reason: str = NO_SAMPLES) -> None:
            results[name] = value
            reasons[name] = reason

        for name in ("fd", "fd_l1", "fd_kl", "bias_score"):
            add(name, self.metrics[name].compute().item())
        reasons["fd_kl"] = f"a {self.sensitive} class of target probability 0 was predicted"  # when infinite
        for name in self.extra_targets:
            add(f"fd/{name}", self.metrics[f"fd_extra_{self.classifier.attribute_index(name)}"].compute().item())
        add(f"confident/{self.sensitive}", self.metrics["confident"].compute()[1].item())
        for column, attribute in enumerate(self.classifier.attributes):
            for value, proportion in enumerate(self.metrics[f"proportion_{column}"].compute().tolist()):
                add(f"proportion/{attribute}={value}", proportion)
            agreement = self.metrics[f"agreement_{column}"].compute().item()
            if not math.isnan(agreement):  # the same on every process: the counts are synchronised
                add(f"agreement/{attribute}", agreement)
                by_class = self.metrics[f"agreement_by_class_{column}"].compute().tolist()
                for value, fraction in enumerate(by_class):
                    add(f"agreement/{attribute}={value}", fraction, f"no sample was requested {attribute}={value}")
                scores = self.metrics[f"bias_by_condition_{column}"].compute()
                add(f"bias_score_by/{attribute}", scores[~scores.isnan()].mean().item())
                for value, score in enumerate(scores.tolist()):
                    add(f"bias_score/{attribute}={value}", score, f"no sample was requested {attribute}={value}")
        if self.target_column is not None:
            for value, fd in enumerate(self.metrics["fd_given_target"].compute().tolist()):
                add(f"fd_given_{self.target}={value}", fd, f"no sample was predicted {self.target}={value}")
            add("dp_gap", self.metrics["dp_gap"].compute().item(), self._dp_gap_undefined_reason(results))
        if "quality" in self.metrics:
            quality = self.metrics["quality"]
            reason = (
                f"the reference has {len(quality.reference)} image(s); it needs at least 2"
                if num_samples >= 2
                else f"it needs at least 2 generated samples, got {num_samples}"
            )
            distances = quality.compute()
            for name, key in (("fid_cls", "fid"), ("kid_cls", "kid"), ("kid_cls_std", "kid_std")):
                add(name, distances[key].item(), reason)
        return results, reasons

    def _dp_gap_undefined_reason(self, results: dict[str, float]) -> str:
        """Why ``dp_gap`` would not be measurable on these samples (see ``DemographicParityGap``)."""
        positive = results[f"proportion/{self.target}={DP_POSITIVE_CLASS}"]
        if math.isnan(positive):
            return NO_SAMPLES
        if positive in (0.0, 1.0):
            amount = "no" if positive == 0.0 else "every"
            return f"{amount} sample was predicted {self.target}={DP_POSITIVE_CLASS}"
        classes = self.classifier.num_classes[self.sensitive_column]
        predicted = [k for k in range(classes) if results[f"proportion/{self.sensitive}={k}"] > 0]
        return f"every sample was predicted {self.sensitive}={predicted[0]}"

    def _finish(self, trainer: Trainer, pl_module: LightningModule, log: bool) -> None:
        results = self.compute()
        if log:
            for name, value in results.items():
                if value is not None:  # the same names on every process: the results are synchronised
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

    def write(self, results: dict[str, Any], folder: Path, method: str) -> None:
        """Writes ``metrics.json`` and a Markdown table ``metrics.md`` into ``folder`` (undefined metrics: null)."""
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
            f"| {name} | {'null' if value is None else f'{value:.4f}' if isinstance(value, float) else value} |"
            for name, value in results.items()
        ]
        for name, text in (
            ("metrics.json", json.dumps(record, indent=2, allow_nan=False) + "\n"),
            ("metrics.md", "\n".join(lines) + "\n"),
        ):
            write_text_atomically(folder / name, text)
