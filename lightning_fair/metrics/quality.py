"""Feature-space image quality metrics (FID/KID) on an attribute classifier's features."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_fair.classifiers import AttributeClassifier


class ClassifierFeatures(nn.Module):
    """The ``feature`` module of torchmetrics' FID/KID: an attribute classifier's penultimate features.

    Images (N x C x H x W in [-1, 1]) go through the classifier; a 2-D tensor is taken as features already
    computed (used to feed cached reference features through the metrics' public ``update``).
    """

    def __init__(self, classifier: AttributeClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.feature_dim

    def forward(self, images_or_features: Tensor) -> Tensor:
        """Features of images, or the given features unchanged."""
        if images_or_features.ndim == 2:
            return images_or_features
        with torch.no_grad():
            return self.classifier.features(images_or_features)


def reference_features(
    classifier: AttributeClassifier,
    dataset: Dataset,
    description: str,
    cache_dir: Path | None,
    batch_size: int = 256,
) -> Tensor:
    """Classifier features of every image of a reference dataset, cached on disk.

    Args:
        classifier: the feature extractor.
        dataset: reference images (items with an ``image`` in [-1, 1]).
        description: identifies the dataset in the cache key (e.g. its root and split).
        cache_dir: where to keep the features (``None``: no cache).
        batch_size: images per forward pass.

    Returns:
        Features of shape ``(N, feature_dim)`` on the CPU.
    """
    cache_file = None
    if cache_dir is not None:
        digest = hashlib.sha256(description.encode())
        for tensor in classifier.state_dict().values():
            digest.update(tensor.detach().cpu().float().numpy().tobytes())
        cache_file = Path(cache_dir) / f"reference_features_{digest.hexdigest()[:16]}.pt"
        if cache_file.is_file():
            return torch.load(cache_file)
    device = next(classifier.parameters()).device
    chunks = []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size):
            chunks.append(classifier.features(batch["image"].to(device)).cpu())
    features = torch.cat(chunks)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_suffix(f".tmp{os.getpid()}")
        torch.save(features, temporary)
        temporary.replace(cache_file)
    return features
