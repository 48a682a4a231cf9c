"""Loading an attribute classifier from a checkpoint, a pretrained folder or a shipped name."""

from __future__ import annotations

import contextvars

from lightning_fair.classifiers.attribute_classifier import AttributeClassifier
from lightning_fair.models import resolve_model_path


def load_classifier(reference: str) -> AttributeClassifier:
    """Loads a frozen :class:`AttributeClassifier` in eval mode.

    Args:
        reference: a Lightning checkpoint (``.ckpt``), a folder written by ``save_pretrained``, or the name
            of a classifier shipped with the package.
    """
    path = resolve_model_path(reference, "attribute classifier")
    # A fresh context: inside the command line's instantiation of a method that loads a classifier, Lightning
    # would otherwise hand the method's own hyperparameters to the classifier's save_hyperparameters.
    if path.is_dir():
        classifier = contextvars.Context().run(AttributeClassifier.from_pretrained, path)
    else:
        classifier = contextvars.Context().run(AttributeClassifier.load_from_checkpoint, path, map_location="cpu")
    return classifier.eval().requires_grad_(False)
