"""Generation requests: which sample indices each process generates, in which batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from lightning_fair.data.generated import check_manifest, from_pixels, generation_settings, read_record, stored_indices
from lightning_fair.data.prompt_sets import sample_indices


class RequestBatches(Dataset):
    """Item ``j`` is one process's share of a global batch: global batch ``j // W``, part ``j % W``.

    With Lightning's distributed sampler (no shuffle), process ``r`` of ``W`` receives items
    ``r, r + W, r + 2W, ...``, i.e. its part of every global batch in order. The dataset length is always a
    multiple of ``W``, so no item is repeated or dropped; a part may be empty when the last global batch
    has fewer samples than processes. With several prompts, each prompt's ``num_samples`` samples (global indices
    ``p * PROMPT_STRIDE + i``, see :mod:`lightning_fair.data.prompt_sets`) form their own global batches: a batch
    never mixes prompts.

    With a ``store`` (a folder of records, see :mod:`lightning_fair.data.generated`), a global batch whose samples
    all have a record there is read back: its items carry the stored ``images`` (in [-1, 1]) and ``conditions``
    instead of being generated. Every other item asks for its samples ``as_stored`` (quantised to 8 bits, as the
    records hold them), so that generated and read-back samples are the same images. A global batch is read back or
    generated as a whole, on every process, so batch-level methods see the same global batches either way.
    """

    def __init__(
        self,
        num_samples: int,
        global_batch_size: int,
        world_size: int,
        store: Path | None = None,
        done: frozenset[int] | set[int] = frozenset(),
        num_prompts: int = 1,
    ) -> None:
        self.world_size = world_size
        self.store = store
        self.per_prompt = num_prompts > 1  # the store's layout: a folder per prompt
        starts = range(0, num_samples, global_batch_size)
        self.global_batches = [
            sample_indices(prompt, torch.arange(start, min(start + global_batch_size, num_samples))).numpy()
            for prompt in range(num_prompts)
            for start in starts
        ]
        self.read_back = [store is not None and set(batch.tolist()) <= done for batch in self.global_batches]
        self.num_read_back = sum(
            len(batch) for batch, read in zip(self.global_batches, self.read_back, strict=True) if read
        )

    def __len__(self) -> int:
        return len(self.global_batches) * self.world_size

    def __getitem__(self, item: int) -> dict[str, Any]:
        batch = item // self.world_size
        part = np.array_split(self.global_batches[batch], self.world_size)[item % self.world_size]
        indices = torch.as_tensor(part, dtype=torch.long)
        if self.store is None:
            return {"index": indices}
        if not self.read_back[batch]:
            return {"index": indices, "as_stored": True}
        records = [read_record(self.store, index, self.per_prompt) for index in part.tolist()]
        pixels = torch.stack([pixels for pixels, _ in records]) if records else torch.empty(0, dtype=torch.uint8)
        names = dict.fromkeys(name for _, conditions in records for name in conditions)
        conditions = {name: torch.tensor([record[name] for _, record in records]) for name in names}
        return {"index": indices, "images": from_pixels(pixels), "conditions": conditions}


class GenerationRequests(LightningDataModule):
    """Requests for ``num_samples`` generated images, for ``test`` and ``predict``.

    Sample indices ``0..num_samples-1`` are cut into global batches of ``batch_size``, for each of the method's
    prompts when it has a prompt set (``num_samples`` is then per prompt); each global batch is split across the
    processes, so every sample is generated exactly once (no padding, no repetition) and
    batch-level methods see the same global batches whatever the number of processes.

    A method that trains or calibrates on real images (``fit``/``validate``) gets them from ``train_data``,
    so that one config serves ``fit``, ``test`` and ``predict``; without ``train_data``, ``fit`` iterates
    ``calibration_samples`` generation requests (for a training-free method that calibrates on its own samples).

    Args:
        num_samples: number of images to generate (per prompt, with a prompt set).
        batch_size: global batch size (all processes together).
        skip_existing: a ``GenerationWriter`` output folder to resume: global batches whose samples all have a
            record there are read back instead of generated, so the callbacks (metrics, grid) still see every
            sample; a folder written with other settings is refused. Generated images are then passed on as the
            records store them (8-bit), so a resumed run's metrics equal an uninterrupted run's.
        train_data: the image DataModule of ``fit`` and ``validate`` (its train and val splits).
        calibration_samples: requests iterated by ``fit`` when there is no ``train_data``, and the samples per tried
            scale of a method's calibration (unless the method sets its own).
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
        module = self.trainer.lightning_module if self.trainer is not None else None
        num_prompts = getattr(module, "num_prompts", 1)
        if num_samples is not None:
            requests = RequestBatches(num_samples, self.batch_size, world_size, num_prompts=num_prompts)
            return DataLoader(requests, batch_size=None)
        if self.skip_existing is None:
            requests = RequestBatches(self.num_samples, self.batch_size, world_size, num_prompts=num_prompts)
            return DataLoader(requests, batch_size=None)
        store = Path(self.skip_existing)
        check_manifest(store, generation_settings(module, self.num_samples, self.batch_size))
        done = self.trainer.strategy.broadcast(stored_indices(store))  # process 0's view, so all decide alike
        requests = RequestBatches(self.num_samples, self.batch_size, world_size, store, done, num_prompts)
        total = self.num_samples * num_prompts
        rank_zero_info(
            f"GenerationRequests: {requests.num_read_back} of {total} samples are read back from {store}, "
            f"{total - requests.num_read_back} generated"
        )
        return DataLoader(requests, batch_size=None)

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
