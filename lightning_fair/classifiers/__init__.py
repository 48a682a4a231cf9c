"""Attribute classifiers used for pseudo-labels, evaluation and feature-based quality metrics."""

from lightning_fair.classifiers.attribute_classifier import AttributeClassifier

__all__ = ["AttributeClassifier"]
