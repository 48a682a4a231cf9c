"""Base class of the synthetic datasets the package writes in real on-disk formats."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

MARKER_FILE = "synthetic.json"


class SyntheticDataset(ABC):
    """Writes a deterministic, controllably biased dataset into a folder, atomically.

    The folder is first written under a temporary name beside ``root`` and renamed when complete, so an
    interrupted run never leaves a half-written dataset. A ``synthetic.json`` file records the settings; a
    folder written with other settings is refused rather than silently reused.

    Args:
        num_images: number of images over all splits.
        image_size: side of the square images in pixels.
        seed: seed of everything random; the same seed writes the same files.
        split_fractions: fractions of the images in the train, val and test splits.
    """

    format: ClassVar[str]

    def __init__(
        self, num_images: int, image_size: int, seed: int, split_fractions: tuple[float, float, float]
    ) -> None:
        if num_images < 3:
            raise ValueError(f"num_images must be at least 3, got {num_images}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {image_size}")
        if len(split_fractions) != 3 or min(split_fractions) <= 0 or abs(sum(split_fractions) - 1) > 1e-6:
            raise ValueError(f"split_fractions must be 3 positive numbers summing to 1, got {split_fractions}")
        self.num_images = num_images
        self.image_size = image_size
        self.seed = seed
        self.split_fractions = tuple(float(f) for f in split_fractions)

    def settings(self) -> dict[str, Any]:
        """Returns the settings that determine the written files."""
        settings = {key: value for key, value in vars(self).items() if not key.startswith("_")}
        settings["split_fractions"] = list(self.split_fractions)
        return {"class": type(self).__name__, **settings}

    def split_sizes(self) -> tuple[int, int, int]:
        """Returns the number of train, val and test images."""
        train = round(self.num_images * self.split_fractions[0])
        val = round(self.num_images * self.split_fractions[1])
        return train, val, self.num_images - train - val

    def is_written(self, root: str | Path) -> bool:
        """Returns whether ``root`` holds this dataset; raises if it holds another one."""
        marker = Path(root) / MARKER_FILE
        if not marker.is_file():
            if Path(root).exists() and any(Path(root).iterdir()):
                raise FileExistsError(
                    f"'{root}' is not empty and was not written by {type(self).__name__}: "
                    "point 'root' at an empty or missing folder to generate the synthetic data there"
                )
            return False
        written = json.loads(marker.read_text())
        if written != self.settings():
            raise FileExistsError(
                f"'{root}' holds a synthetic dataset written with other settings ({marker}): "
                f"{written}; requested {self.settings()}. Delete the folder or choose another root."
            )
        return True

    def write(self, root: str | Path) -> bool:
        """Writes the dataset into ``root`` unless it is already there.

        Returns:
            Whether files were written.
        """
        root = Path(root)
        if self.is_written(root):
            return False
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        try:
            self._write_files(staging)
            (staging / MARKER_FILE).write_text(json.dumps(self.settings(), indent=2) + "\n")
            if root.exists():
                root.rmdir()
            os.replace(staging, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return True

    @abstractmethod
    def _write_files(self, folder: Path) -> None:
        """Writes the images and the metadata files into ``folder``."""
