"""Attribute classifiers used for pseudo-labels, evaluation and feature-based quality metrics."""

from lightning_fair.classifiers.attribute_classifier import AttributeClassifier
from lightning_fair.classifiers.loading import load_classifier

__all__ = ["AttributeClassifier", "load_classifier"]
