"""Classifier features of a reference dataset for ``fid_cls``/``kid_cls``, cached on disk."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_fair.classifiers import AttributeClassifier
from lightning_fair.data.dataset import AttributeImageDataset
from lightning_fair.utils.files import replace_atomically

CACHE_FORMAT = "reference_features/2"  # part of every key: caches of another format are never read


def reference_cache_key(classifier: AttributeClassifier, dataset: AttributeImageDataset) -> str:
    """A digest of everything the features depend on.

    That is: every image file (path, size, modification time, in order), the full transform (crop, size,
    normalisation) and the classifier (its configuration and weights).
    """
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    for path in dataset.image_paths:
        stat = Path(path).stat()
        digest.update(f"{Path(path).resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    digest.update(repr(dataset.transform).encode())
    digest.update(json.dumps(dict(classifier.hparams), sort_keys=True, default=str).encode())
    for name, tensor in classifier.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def reference_features(
    classifier: AttributeClassifier,
    dataset: AttributeImageDataset,
    cache_dir: Path | None,
    batch_size: int = 256,
) -> Tensor:
    """Classifier features of every image of a reference dataset, in dataset order, cached on disk.

    Args:
        classifier: the feature extractor.
        dataset: reference images.
        cache_dir: where to keep the features, under a key of everything they depend on (``None``: no cache).
        batch_size: images per forward pass.

    Returns:
        Features of shape ``(N, feature_dim)`` on the CPU.
    """
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"reference_features_{reference_cache_key(classifier, dataset)}.pt"
        if cache_file.is_file():
            return torch.load(cache_file)
    device = next(classifier.parameters()).device
    chunks = []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size):
            chunks.append(classifier.features(batch["image"].to(device)).cpu())
    features = torch.cat(chunks)
    if cache_file is not None:
        replace_atomically(cache_file, lambda temporary: torch.save(features, temporary))
    return features
