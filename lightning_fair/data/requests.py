"""Generation requests: which sample indices each process generates, in which batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

IMAGE_FOLDER = "images"


def image_name(index: int) -> str:
    """File name of generated sample ``index`` in a ``GenerationWriter`` folder."""
    return f"{index:06d}.png"


def existing_indices(output_dir: str | Path) -> set[int]:
    """Indices of the samples already written in a ``GenerationWriter`` folder."""
    folder = Path(output_dir) / IMAGE_FOLDER
    return {int(path.stem) for path in folder.glob("*.png") if path.stem.isdigit()} if folder.is_dir() else set()


class RequestBatches(Dataset):
    """Item ``j`` is one process's share of a global batch: global batch ``j // W``, part ``j % W``.

    With Lightning's distributed sampler (no shuffle), process ``r`` of ``W`` receives items
    ``r, r + W, r + 2W, ...``, i.e. its part of every global batch in order. The dataset length is always a
    multiple of ``W``, so no item is repeated or dropped; a part may be empty when the last global batch
    has fewer samples than processes.
    """

    def __init__(self, num_samples: int, global_batch_size: int, world_size: int, done: set[int] | None = None) -> None:
        self.world_size = world_size
        starts = range(0, num_samples, global_batch_size)
        batches = [np.arange(start, min(start + global_batch_size, num_samples)) for start in starts]
        self.global_batches = [batch for batch in batches if not done or not set(batch.tolist()) <= done]

    def __len__(self) -> int:
        return len(self.global_batches) * self.world_size

    def __getitem__(self, item: int) -> dict[str, Tensor]:
        batch = self.global_batches[item // self.world_size]
        part = np.array_split(batch, self.world_size)[item % self.world_size]
        return {"index": torch.as_tensor(part, dtype=torch.long)}


class GenerationRequests(LightningDataModule):
    """Requests for ``num_samples`` generated images, for ``test`` and ``predict``.

    Sample indices ``0..num_samples-1`` are cut into global batches of ``batch_size``; each global batch is
    split across the processes, so every sample is generated exactly once (no padding, no repetition) and
    batch-level methods see the same global batches whatever the number of processes.

    A method that trains or calibrates on real images (``fit``/``validate``) gets them from ``train_data``,
    so that one config serves ``fit``, ``test`` and ``predict``; without ``train_data``, ``fit`` iterates
    ``calibration_samples`` generation requests (for a training-free method that calibrates on its own samples).

    Args:
        num_samples: number of images to generate.
        batch_size: global batch size (all processes together).
        skip_existing: a ``GenerationWriter`` output folder; global batches whose images are all there
            already are not generated again (an interrupted ``predict`` resumes).
        train_data: the image DataModule of ``fit`` and ``validate`` (its train and val splits).
        calibration_samples: requests iterated by ``fit`` when there is no ``train_data``.
    """

    def __init__(
        self,
        num_samples: int = 512,
        batch_size: int = 64,
        skip_existing: str | None = None,
        train_data: LightningDataModule | None = None,
        calibration_samples: int = 256,
    ) -> None:
        super().__init__()
        self.calibration_samples = calibration_samples
        self.train_data = train_data
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"'num_samples' and 'batch_size' must be positive, got {num_samples} and {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.skip_existing = skip_existing

    def _loader(self, num_samples: int | None = None) -> DataLoader:
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size < world_size:
            raise ValueError(
                f"'batch_size' ({self.batch_size}) must be at least the number of processes ({world_size})"
            )
        if num_samples is not None:
            return DataLoader(RequestBatches(num_samples, self.batch_size, world_size), batch_size=None)
        done = existing_indices(self.skip_existing) if self.skip_existing else None
        return DataLoader(RequestBatches(self.num_samples, self.batch_size, world_size, done), batch_size=None)

    def _images(self) -> LightningDataModule:
        self.train_data.trainer = self.trainer
        return self.train_data

    def prepare_data(self) -> None:
        """Prepares ``train_data`` (e.g. writes a synthetic dataset) when there is one."""
        if self.train_data is not None:
            self.train_data.prepare_data()

    def setup(self, stage: str) -> None:
        """Sets up ``train_data`` for ``fit`` and ``validate``."""
        if stage in ("fit", "validate") and self.train_data is not None:
            self._images().setup(stage)

    def train_dataloader(self) -> DataLoader:
        """The train split of ``train_data``, or the calibration requests without it."""
        if self.train_data is None:
            return self._loader(self.calibration_samples)
        return self._images().train_dataloader()

    def val_dataloader(self) -> DataLoader | list:
        """The val split of ``train_data`` (nothing to validate without it)."""
        return [] if self.train_data is None else self._images().val_dataloader()

    def test_dataloader(self) -> DataLoader:
        """The requests of this process."""
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        """The requests of this process."""
        return self._loader()
