"""A map-style dataset of images with attribute labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset


class AttributeImageDataset(Dataset):
    """Images with attribute labels in the batch contract of the framework.

    Each item is a dict with ``image`` (float tensor in [-1, 1], C x H x W), ``attributes`` (long tensor,
    one label per selected attribute) and ``index`` (the row of the image in its dataset table).

    Args:
        image_paths: path of each image.
        attributes: labels, shape ``(N, A)``.
        indices: table row of each image, shape ``(N,)``.
        transform: maps a PIL RGB image to a tensor in [-1, 1].
    """

    def __init__(
        self,
        image_paths: list[Path],
        attributes: np.ndarray,
        indices: np.ndarray,
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        self.image_paths = image_paths
        self.attributes = torch.as_tensor(attributes, dtype=torch.long)
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        path = self.image_paths[item]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise RuntimeError(f"Cannot read image '{path}': {error}") from error
        return {
            "image": self.transform(rgb),
            "attributes": self.attributes[item],
            "index": self.indices[item],
        }
