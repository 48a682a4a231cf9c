"""The fairness and quality metrics of generated images as one object: update from batches, compute a typed result."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric, SumMetric

from lightning_fair.classifiers import Classifier
from lightning_fair.metrics.accuracy import GroupedAccuracy
from lightning_fair.metrics.distribution import validate_distribution
from lightning_fair.metrics.fairness import (
    AttributeProportions,
    DemographicParityGap,
    FairnessDiscrepancy,
    PairwiseBiasScore,
)
from lightning_fair.metrics.feature_distance import FeatureDistance

CONFIDENCE = 0.9
DP_POSITIVE_CLASS = 1
NO_SAMPLES = "no sample was generated"

Value = float | None  # a metric's value; None where the samples cannot determine it (or it is infinite)


@dataclass(frozen=True)
class ConditionResult:
    """How the samples came out against the classes a method requested for them, for one attribute.

    Attributes:
        agreement: fraction of samples predicted as their requested class.
        agreement_by_class: the same within the samples requested each class.
        bias_score: InvDiff's bias score of the sensitive attribute within each requested class, averaged.
        bias_score_by_class: that score within the samples requested each class.
    """

    agreement: Value
    agreement_by_class: list[Value]
    bias_score: Value
    bias_score_by_class: list[Value]


@dataclass(frozen=True)
class QualityResult:
    """FID and KID of the samples in the classifier's feature space against the reference images (not Inception).

    Attributes:
        fid: Fréchet distance.
        kid: kernel distance (mean over subsets).
        kid_std: its standard deviation over subsets.
        feature_space: what the features are, in the metrics' names (``cls``: a trained classifier's penultimate
            features, ``fid_cls``; ``clip``: CLIP image embeddings, ``fid_clip``).
    """

    fid: Value
    kid: Value
    kid_std: Value
    feature_space: str = "cls"

    def metrics(self) -> dict[str, Value]:
        """``fid_<space>``, ``kid_<space>`` and ``kid_<space>_std``."""
        space = self.feature_space
        return {f"fid_{space}": self.fid, f"kid_{space}": self.kid, f"kid_{space}_std": self.kid_std}


@dataclass(frozen=True)
class FairnessResult:
    """Every metric of one evaluation, typed; :meth:`metrics` gives them under their flat names.

    Attributes:
        num_samples: images evaluated.
        sensitive: the attribute measured against ``target_distribution``.
        target: the content attribute of ``fd_given_target`` and ``dp_gap`` (``None``: neither).
        target_distribution: the fair distribution of ``sensitive``.
        fd, fd_l1, fd_kl: L2, L1 and KL distance of the predicted distribution of ``sensitive`` to the target.
        bias_score: InvDiff's pairwise bias score of ``sensitive``.
        confident: fraction of samples whose ``sensitive`` prediction has probability of at least 0.9.
        proportions: predicted class proportions of every attribute the classifier predicts.
        extra_targets: further attributes measured against their own target distribution.
        fd_by_attribute: L2 distance of each of ``extra_targets``.
        conditions: per attribute a method requested classes of per sample, how the samples agree with them.
        fd_given_target: FD of ``sensitive`` within each predicted class of ``target``.
        dp_gap: demographic-parity gap of ``target`` (class 1) across predicted ``sensitive`` groups.
        quality: FID and KID in the classifier's feature space against the reference (``None``: no reference).
        unknown: fraction of samples the classifier left unlabelled for ``sensitive`` (a zero-shot classifier's
            ``threshold``); they are left out of every proportion and distance of ``sensitive``.
        clip_score: mean CLIP score of the samples against their prompts (``None``: no CLIP or no prompts).
    """

    num_samples: int
    sensitive: str
    target: str | None
    target_distribution: list[float]
    fd: Value
    fd_l1: Value
    fd_kl: Value
    bias_score: Value
    confident: Value
    proportions: dict[str, list[Value]]
    extra_targets: dict[str, list[float]] = field(default_factory=dict)
    fd_by_attribute: dict[str, Value] = field(default_factory=dict)
    conditions: dict[str, ConditionResult] = field(default_factory=dict)
    fd_given_target: list[Value] = field(default_factory=list)
    dp_gap: Value = None
    quality: QualityResult | None = None
    unknown: Value = 0.0
    clip_score: Value = None

    @property
    def sensitive_proportions(self) -> list[Value]:
        """The predicted proportions of ``sensitive``."""
        return self.proportions[self.sensitive]

    def metrics(self) -> dict[str, Any]:
        """The metrics under their flat names (``metrics.json``, the logged ``test/<name>``)."""
        flat: dict[str, Any] = {"fd": self.fd, "fd_l1": self.fd_l1, "fd_kl": self.fd_kl, "bias_score": self.bias_score}
        flat.update({f"fd/{name}": value for name, value in self.fd_by_attribute.items()})
        flat[f"confident/{self.sensitive}"] = self.confident
        flat[f"unknown/{self.sensitive}"] = self.unknown
        for attribute, proportions in self.proportions.items():
            flat.update({f"proportion/{attribute}={k}": value for k, value in enumerate(proportions)})
            condition = self.conditions.get(attribute)
            if condition is not None:
                flat[f"agreement/{attribute}"] = condition.agreement
                flat.update({f"agreement/{attribute}={k}": v for k, v in enumerate(condition.agreement_by_class)})
                flat[f"bias_score_by/{attribute}"] = condition.bias_score
                flat.update({f"bias_score/{attribute}={k}": v for k, v in enumerate(condition.bias_score_by_class)})
        if self.target is not None:
            flat.update({f"fd_given_{self.target}={k}": value for k, value in enumerate(self.fd_given_target)})
            flat["dp_gap"] = self.dp_gap
        if self.quality is not None:
            flat.update(self.quality.metrics())
        if self.clip_score is not None:
            flat["clip_score"] = self.clip_score
        return {**flat, "num_samples": self.num_samples}


class FairnessSuite(nn.Module):
    """Labels generated images with an attribute classifier and holds every metric of them (exact under DDP).

    ``update`` takes batches of images (with the classes a method requested for them and their sample indices);
    ``compute`` synchronises the metrics and returns a :class:`FairnessResult`, warning once for every metric the
    samples cannot determine (``None`` in the result). ``reset`` starts over.

    Args:
        classifier: the attribute classifier (labels and features).
        sensitive: the attribute to balance (one the classifier predicts).
        target: optional content attribute (for ``fd_given_target`` and ``dp_gap``).
        target_distribution: fair distribution of ``sensitive`` (uniform by default).
        extra_targets: further attributes to report FD for, with their target distributions.
        reference_features: classifier features of real images for ``fid_cls``/``kid_cls`` (``None``: no quality).
        kid_subset_size: images per KID subset (capped by the number of generated and of reference images).
    """

    def __init__(
        self,
        classifier: Classifier,
        sensitive: str,
        target: str | None = None,
        target_distribution: list[float] | None = None,
        extra_targets: dict[str, list[float]] | None = None,
        reference_features: Tensor | None = None,
        kid_subset_size: int = 256,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.attributes = list(classifier.attributes)
        self.num_classes = list(classifier.num_classes)
        self.sensitive, self.target = sensitive, target
        self.sensitive_column = classifier.attribute_index(sensitive, "sensitive")
        self.target_column = None if target is None else classifier.attribute_index(target, "target")
        num_sensitive = self.num_classes[self.sensitive_column]
        self.target_distribution = validate_distribution(target_distribution, num_sensitive).tolist()
        self.extra_targets = {
            name: validate_distribution(
                values, self.num_classes[classifier.attribute_index(name, "extra_targets")], f"extra_targets.{name}"
            ).tolist()
            for name, values in (extra_targets or {}).items()
        }
        if kid_subset_size < 2:
            raise ValueError(f"Option 'kid_subset_size' must be at least 2, got {kid_subset_size}")
        metrics: dict[str, Metric] = {
            "fd": FairnessDiscrepancy(num_sensitive, self.target_distribution, "l2"),
            "fd_l1": FairnessDiscrepancy(num_sensitive, self.target_distribution, "l1"),
            "fd_kl": FairnessDiscrepancy(num_sensitive, self.target_distribution, "kl"),
            "bias_score": PairwiseBiasScore(num_sensitive),
            "confident": AttributeProportions(2),  # class 1: confident
            "unknown": AttributeProportions(2),  # class 1: left unlabelled
            "clip_score": MeanMetric(nan_strategy="disable"),
            "num_samples": SumMetric(),
        }
        for column, classes in enumerate(self.num_classes):
            metrics[f"proportion_{column}"] = AttributeProportions(classes)
            metrics[f"agreement_{column}"] = GroupedAccuracy(1)
            metrics[f"agreement_by_class_{column}"] = GroupedAccuracy(classes)
            metrics[f"bias_by_condition_{column}"] = PairwiseBiasScore(
                num_sensitive, num_groups=classes, per_group=True
            )
        for name, distribution in self.extra_targets.items():
            column = classifier.attribute_index(name)
            metrics[f"fd_extra_{column}"] = FairnessDiscrepancy(self.num_classes[column], distribution, "l2")
        if self.target_column is not None:
            num_target = self.num_classes[self.target_column]
            metrics["fd_given_target"] = FairnessDiscrepancy(
                num_sensitive, self.target_distribution, "l2", num_groups=num_target
            )
            metrics["dp_gap"] = DemographicParityGap(num_target, num_sensitive, positive_class=DP_POSITIVE_CLASS)
        if reference_features is not None:
            metrics["quality"] = FeatureDistance(reference_features, kid_subset_size)
        self.metrics = nn.ModuleDict(metrics)

    def reset(self) -> None:
        """Forgets every update."""
        for metric in self.metrics.values():
            metric.reset()

    def update(
        self,
        images: Tensor,
        conditions: dict[str, Tensor] | None = None,
        indices: Tensor | None = None,
        prompts: list[str] | None = None,
    ) -> None:
        """Labels a batch of generated images in [-1, 1] and updates every metric.

        Args:
            images: the generated batch.
            conditions: per-sample requested classes by name (as the method reports them); those named after an
                attribute of the classifier are compared with its predictions.
            indices: the global sample index of each image, which orders the samples of ``fid_cls``/``kid_cls``
                whatever the split across processes (default: the order of the updates, single process only).
            prompts: the prompt of each image, for CLIP score (when the classifier gives one).
        """
        if len(images) == 0:
            return
        with torch.no_grad():
            probabilities = list(self.classifier.predict_proba(images).values())
            features = self.classifier.features(images) if "quality" in self.metrics else None
            scores = None
            if prompts is not None and hasattr(self.classifier, "clip_score"):
                scores = self.classifier.clip_score(images, prompts)
        predictions = [p.argmax(dim=1) for p in probabilities]
        labelled = [~self.classifier.abstains(p) for p in probabilities]
        known = labelled[self.sensitive_column]
        sensitive = predictions[self.sensitive_column]
        for name in ("fd", "fd_l1", "fd_kl", "bias_score"):
            self.metrics[name].update(sensitive[known])
        confident = probabilities[self.sensitive_column].amax(dim=1) >= CONFIDENCE
        self.metrics["confident"].update(confident.long())
        self.metrics["unknown"].update((~known).long())
        self.metrics["clip_score"].update(images.new_zeros(0) if scores is None else scores)
        self.metrics["num_samples"].update(len(images))
        for column, prediction in enumerate(predictions):
            self.metrics[f"proportion_{column}"].update(prediction[labelled[column]])
            requested = (conditions or {}).get(self.attributes[column])
            if requested is None:  # an empty update: every process makes the same collective calls
                prediction, requested, conditioned = prediction[:0], prediction[:0], sensitive[:0]
                groups = requested
            else:
                requested, conditioned = requested.to(prediction.device).long(), sensitive[known]
                groups = requested[known]
            self.metrics[f"agreement_{column}"].update(prediction, requested, torch.zeros_like(requested))
            self.metrics[f"agreement_by_class_{column}"].update(prediction, requested, requested)
            self.metrics[f"bias_by_condition_{column}"].update(conditioned, groups=groups)
            if f"fd_extra_{column}" in self.metrics:
                self.metrics[f"fd_extra_{column}"].update(predictions[column][labelled[column]])
        if self.target_column is not None:
            both = known & labelled[self.target_column]
            target = predictions[self.target_column]
            self.metrics["fd_given_target"].update(sensitive[both], groups=target[both])
            self.metrics["dp_gap"].update(target[both], groups=sensitive[both])
        if features is not None:
            self.metrics["quality"].update(features, indices)

    def compute(self) -> FairnessResult:
        """Synchronises and computes every metric (call it on every process: each makes the same collective calls).

        A metric the samples cannot determine (e.g. ``dp_gap`` when no sample was predicted in the target's class 1)
        is ``None``, with a warning naming why; so is an infinite ``fd_kl``.
        """
        with warnings.catch_warnings():  # torchmetrics' warning of a process without samples: explained below
            warnings.filterwarnings("ignore", message=r".*called before the ``update`` method")
            return _Computation(self).result()


class _Computation:
    """One ``compute`` of a suite: every value, the reason of each undefined one, then the warnings."""

    def __init__(self, suite: FairnessSuite) -> None:
        self.suite = suite
        self.num_samples = int(suite.metrics["num_samples"].compute().item())
        self.unreported: dict[str, list[str]] = {}  # names of the values that cannot be reported, by explanation

    def value(self, name: str, value: float, reason: str = NO_SAMPLES) -> Value:
        """``value``, or ``None`` (remembered under ``reason``) when it is not finite."""
        if math.isfinite(value):
            return value
        explanation = f"{'undefined' if math.isnan(value) else 'infinite'}: "
        explanation += reason if self.num_samples else NO_SAMPLES
        self.unreported.setdefault(explanation, []).append(name)
        return None

    def values(self, name: str, values: Tensor, reason: str) -> list[Value]:
        """Each of ``values`` as :meth:`value` (named ``<name>=<k>``, ``{k}`` in ``reason`` is the class)."""
        return [self.value(f"{name}={k}", v, reason.format(k=k)) for k, v in enumerate(values.tolist())]

    def result(self) -> FairnessResult:
        suite, metrics = self.suite, self.suite.metrics
        scalar = {name: metrics[name].compute().item() for name in ("fd", "fd_l1", "fd_kl", "bias_score")}
        fd_kl_reason = f"a {suite.sensitive} class of target probability 0 was predicted"
        raw_proportions = {
            attribute: metrics[f"proportion_{column}"].compute() for column, attribute in enumerate(suite.attributes)
        }
        result: dict[str, Any] = {
            name: self.value(name, value, fd_kl_reason if name == "fd_kl" else NO_SAMPLES)
            for name, value in scalar.items()
        }
        extra = {name: metrics[f"fd_extra_{suite.classifier.attribute_index(name)}"] for name in suite.extra_targets}
        result["fd_by_attribute"] = {name: self.value(f"fd/{name}", fd.compute().item()) for name, fd in extra.items()}
        confident = metrics["confident"].compute()[1].item()
        result["confident"] = self.value(f"confident/{suite.sensitive}", confident)
        result["unknown"] = self.value(f"unknown/{suite.sensitive}", metrics["unknown"].compute()[1].item())
        # NaN when no prompt was scored (a classifier without CLIP, or images without prompts): not reported.
        clip_score = metrics["clip_score"].compute().item()
        result["clip_score"] = clip_score if math.isfinite(clip_score) else None
        result["proportions"] = {
            attribute: self.values(f"proportion/{attribute}", proportions, NO_SAMPLES)
            for attribute, proportions in raw_proportions.items()
        }
        result["conditions"] = {}
        for column, attribute in enumerate(suite.attributes):
            agreement = metrics[f"agreement_{column}"].compute().item()
            if math.isnan(agreement):  # nothing requested: the same on every process (the counts are synchronised)
                continue
            unrequested = f"no sample was requested {attribute}={{k}}"
            scores = metrics[f"bias_by_condition_{column}"].compute()
            result["conditions"][attribute] = ConditionResult(
                agreement=agreement,
                agreement_by_class=self.values(
                    f"agreement/{attribute}", metrics[f"agreement_by_class_{column}"].compute(), unrequested
                ),
                bias_score=self.value(f"bias_score_by/{attribute}", scores[~scores.isnan()].mean().item()),
                bias_score_by_class=self.values(f"bias_score/{attribute}", scores, unrequested),
            )
        if suite.target is not None:
            unpredicted = f"no sample was predicted {suite.target}={{k}}"
            result["fd_given_target"] = self.values(
                f"fd_given_{suite.target}", metrics["fd_given_target"].compute(), unpredicted
            )
            gap = metrics["dp_gap"].compute().item()
            result["dp_gap"] = self.value("dp_gap", gap, self.dp_gap_undefined_reason(raw_proportions))
        if "quality" in metrics:
            quality = metrics["quality"]
            reason = (
                f"the reference has {len(quality.reference)} image(s); it needs at least 2"
                if self.num_samples >= 2
                else f"it needs at least 2 generated samples, got {self.num_samples}"
            )
            distances = quality.compute()
            space = suite.classifier.feature_space
            result["quality"] = QualityResult(
                *(
                    self.value(name.format(space), distances[key].item(), reason)
                    for name, key in (("fid_{}", "fid"), ("kid_{}", "kid"), ("kid_{}_std", "kid_std"))
                ),
                feature_space=space,
            )
        for explanation, names in self.unreported.items():
            verb = "is" if len(names) == 1 else "are"
            rank_zero_warn(f"{', '.join(names)} {verb} {explanation}; null in metrics.json")
        return FairnessResult(
            num_samples=self.num_samples,
            sensitive=suite.sensitive,
            target=suite.target,
            target_distribution=suite.target_distribution,
            extra_targets=suite.extra_targets,
            **result,
        )

    def dp_gap_undefined_reason(self, proportions: dict[str, Tensor]) -> str:
        """Why ``dp_gap`` would not be measurable on these samples (see ``DemographicParityGap``)."""
        suite = self.suite
        positive = proportions[suite.target][DP_POSITIVE_CLASS].item()
        if math.isnan(positive):
            return NO_SAMPLES
        if positive in (0.0, 1.0):
            amount = "no" if positive == 0.0 else "every"
            return f"{amount} sample was predicted {suite.target}={DP_POSITIVE_CLASS}"
        predicted = torch.nonzero(proportions[suite.sensitive] > 0).flatten().tolist()
        return f"every sample was predicted {suite.sensitive}={predicted[0]}"
