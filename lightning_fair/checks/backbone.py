"""Is a diffusion backbone usable? Samples per class, labelled by the classifier, against the data's own numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_fair.classifiers import AttributeClassifier
from lightning_fair.data.base import AttributeDataModule
from lightning_fair.methods import ConditionalSampling, DebiasingMethod, PlainSampling, Prompts
from lightning_fair.metrics.feature_distance import frechet_distance
from lightning_fair.metrics.suite import CONFIDENCE

CHECK_FILE = "check.json"  # beside an exported model: the verdict of its check


@dataclass(frozen=True)
class BackboneThresholds:
    """When a backbone is usable.

    Attributes:
        min_agreement_gain: least ``(agreement - chance) / (1 - chance)`` of class-conditional samples (0: chance,
            1: every sample its class; 0.5 is an agreement of 0.75 for two classes).
        min_confident_share: least share of samples the classifier is confident on (probability >= 0.9 for the
            sensitive attribute), relative to its share on the validation images.
        max_fid_ratio: largest ``fid_cls`` of the samples against the validation images, as a multiple of the
            floor (the test images against the validation images, as many as the samples); ``None``: not checked.
    """

    min_agreement_gain: float = 0.5
    min_confident_share: float = 0.5
    max_fid_ratio: float | None = 60.0


@dataclass(frozen=True)
class BackboneVerdict:
    """The numbers of a backbone check and what they say.

    Attributes:
        backbone: the model checked.
        attribute: the attribute its samples are conditioned on (``None``: unconditional).
        samples: samples drawn.
        agreement: share of conditional samples the classifier labels as their requested class.
        chance: the agreement of a model that ignores its condition.
        confident: share of samples the classifier is confident on (sensitive attribute).
        reference_confident: the same share on the validation images.
        fid_cls: Fréchet distance of the samples to the validation images in the classifier's features.
        fid_floor: the same distance of as many test images (what the data itself gives).
        failures: why the backbone is not usable (empty: usable).
        feature_space: the classifier's features, in the distance's name (``fid_cls``, or ``fid_clip`` for CLIP).
    """

    backbone: str
    attribute: str | None
    samples: int
    agreement: float | None
    chance: float | None
    confident: float
    reference_confident: float
    fid_cls: float
    fid_floor: float
    failures: list[str]
    feature_space: str = "cls"

    @property
    def usable(self) -> bool:
        """Whether every check passed."""
        return not self.failures

    def summary(self) -> str:
        """One line: the verdict and its numbers."""
        numbers = []
        if self.agreement is not None:
            numbers.append(f"agreement {self.agreement:.3f} (chance {self.chance:.2f})")
        numbers.append(f"confident {self.confident:.2f} (validation images {self.reference_confident:.2f})")
        numbers.append(f"fid_{self.feature_space} {distance(self.fid_cls)} (floor {distance(self.fid_floor)})")
        verdict = "usable" if self.usable else "NOT USABLE: " + "; ".join(self.failures)
        return f"backbone '{self.backbone}' {verdict} [{', '.join(numbers)}; {self.samples} samples]"

    def as_dict(self) -> dict[str, Any]:
        """The fields and ``usable``."""
        return {**asdict(self), "usable": self.usable}


def check_backbone(
    backbone: str,
    classifier: AttributeClassifier,
    data: AttributeDataModule,
    samples_per_class: int = 256,
    steps: int = 25,
    batch_size: int = 128,
    seed: int = 0,
    prompts: Prompts | None = None,
    thresholds: BackboneThresholds | None = None,
    device: torch.device | str = "cpu",
) -> BackboneVerdict:
    """Samples the backbone and judges the samples (see :class:`BackboneThresholds`).

    ``samples_per_class`` samples per class of the backbone's condition (balanced), or, for an unconditional
    backbone, that many per class of the data's sensitive attribute.

    Args:
        backbone: a diffusers folder or shipped model name.
        classifier: labels the samples and gives the features of ``fid_cls``.
        data: the images the backbone was trained on (its validation and test splits are the reference).
        samples_per_class: samples per class.
        steps: denoising steps (DDIM).
        batch_size: samples per batch.
        seed: seed of the samples.
        prompts: the class prompts of a text-to-image backbone (without them it is checked unconditionally).
        thresholds: when it is usable.
        device: where the backbone and the classifier run.
    """
    thresholds = thresholds or BackboneThresholds()
    sensitive = data.sensitive or data.attributes[0]
    sampler = {"num_inference_steps": steps, "condition_draw": "balanced"}
    method = _sampling_method(backbone, sampler, seed, prompts)
    method.to(device).eval()
    classifier = classifier.to(device).eval()
    crop = method.backbone.center_crop_fraction
    conditional = isinstance(method, ConditionalSampling)
    num_classes = classifier.num_classes[classifier.attribute_index(sensitive, "sensitive")]
    if conditional:
        num_classes = method.num_condition_classes
    attribute = method.condition_attribute if conditional else None
    if attribute not in classifier.attributes:  # a condition the classifier does not predict cannot be checked
        attribute = None
    total = samples_per_class * num_classes
    hits, confident, features = 0, 0, []
    with torch.no_grad(), classifier.inputs_from(crop, f"the images of the backbone '{backbone}'"):
        for start in range(0, total, batch_size):
            images, state = method.sample(torch.arange(start, min(start + batch_size, total)))
            probabilities = classifier.predict_proba(images)
            confident += int((probabilities[sensitive].amax(dim=1) >= CONFIDENCE).sum())
            if attribute is not None:
                requested = state.conditions[attribute].to(images.device)
                hits += int((probabilities[attribute].argmax(dim=1) == requested).sum())
            features.append(classifier.features(images).float().cpu())
    val_features, val_probabilities = _reference(classifier, data, "val", sensitive)
    test_features, _ = _reference(classifier, data, "test", sensitive)
    fid = float(frechet_distance(val_features.double(), torch.cat(features).double()))
    floor = float(frechet_distance(val_features.double(), test_features[:total].double()))
    reference_confident = float((val_probabilities.amax(dim=1) >= CONFIDENCE).float().mean())
    agreement = None if attribute is None else hits / total
    chance = None if attribute is None else 1 / num_classes
    space = getattr(classifier, "feature_space", "cls")
    failures = _failures(agreement, chance, confident / total, reference_confident, fid, floor, thresholds, space)
    return BackboneVerdict(
        str(backbone),
        attribute,
        total,
        agreement,
        chance,
        confident / total,
        reference_confident,
        fid,
        floor,
        failures,
        space,
    )


def _sampling_method(backbone: str, sampler: dict[str, Any], seed: int, prompts: Prompts | None) -> DebiasingMethod:
    """Class-conditional sampling where the backbone has classes (labels, or class prompts), else plain sampling."""
    plain = PlainSampling(backbone, sampler=sampler, seed=seed, prompts=prompts)
    if plain.backbone.conditioning == "class" or (prompts is not None and prompts.classes):
        return ConditionalSampling(backbone, sampler=sampler, seed=seed, prompts=prompts)
    return plain


def _reference(
    classifier: AttributeClassifier, data: AttributeDataModule, split: str, sensitive: str
) -> tuple[Tensor, Tensor]:
    """Classifier features and ``sensitive`` probabilities of the images of ``split``."""
    data.prepare_data()
    features, probabilities = [], []
    device = next(classifier.parameters()).device
    loader = DataLoader(data.dataset(split), batch_size=256)
    with torch.no_grad(), classifier.inputs_from(data.center_crop_fraction, f"the images of '{data.root}'"):
        for batch in loader:
            images = batch["image"].to(device)
            features.append(classifier.features(images).float().cpu())
            probabilities.append(classifier.predict_proba(images)[sensitive].cpu())
    return torch.cat(features), torch.cat(probabilities)


def _failures(
    agreement: float | None,
    chance: float | None,
    confident: float,
    reference_confident: float,
    fid: float,
    floor: float,
    thresholds: BackboneThresholds,
    feature_space: str = "cls",
) -> list[str]:
    failures = []
    if agreement is not None and chance is not None:
        gain = (agreement - chance) / (1 - chance)
        if gain < thresholds.min_agreement_gain:
            at_chance = " (chance: the model ignores its condition)" if gain < 0.1 else ""
            failures.append(f"conditional agreement {agreement:.3f} against chance {chance:.2f}{at_chance}")
    if confident < thresholds.min_confident_share * reference_confident:
        failures.append(
            f"the classifier is confident on {confident:.0%} of the samples but {reference_confident:.0%} of the "
            "validation images (samples unlike the data)"
        )
    if thresholds.max_fid_ratio is not None and fid > thresholds.max_fid_ratio * floor:
        ratio = thresholds.max_fid_ratio
        failures.append(f"fid_{feature_space} {distance(fid)} is over {ratio:g}x the data's own {distance(floor)}")
    return failures


def distance(value: float) -> str:
    """A feature distance for a message: 2 decimals, or 3 significant digits below 1 (CLIP's are small)."""
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"
