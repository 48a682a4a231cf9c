"""Attribute classifiers used for pseudo-labels, evaluation and feature-based quality metrics."""

from lightning_fair.classifiers.attribute_classifier import AttributeClassifier
from lightning_fair.classifiers.loading import Classifier, load_classifier
from lightning_fair.classifiers.zero_shot import ZeroShotClassifier

__all__ = ["AttributeClassifier", "Classifier", "ZeroShotClassifier", "load_classifier"]
