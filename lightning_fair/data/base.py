"""Shared DataModule logic for image datasets with attribute labels."""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from lightning_fair.data.dataset import AttributeImageDataset
from lightning_fair.data.epochs import EpochItems, EpochLoader, EpochSampler, resume_position
from lightning_fair.data.resampling import group_ids, resample_to_ratio
from lightning_fair.data.synthetic.base import SyntheticDataset
from lightning_fair.data.table import SPLIT_CODES, AttributeTable
from lightning_fair.utils.options import check_ranges

VIEW_TOLERANCE = 1e-3  # crop fractions (views of the source images) this close are the same view
MAX_AUTO_WORKERS = 8


def available_workers(processes: int = 1) -> int:
    """Data-loading workers per process that suit this machine, at most 8.

    The usable CPU cores are shared among the ``processes`` running on the machine, each keeping one for itself.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(MAX_AUTO_WORKERS, cores // max(1, processes) - 1))


class AttributeDataModule(LightningDataModule, ABC):
    """Images with attribute labels, read from a dataset's real on-disk format.

    Batches are dicts with ``image`` (float, [-1, 1], B x C x H x W), ``attributes`` (long, B x A, in the
    order of ``attributes``) and ``index`` (row of the image in the dataset's table). Subclasses only parse
    their format in :meth:`load_table`.

    Args:
        root: dataset folder.
        attributes: attribute names to load, in the order of the ``attributes`` tensor.
        sensitive: the attribute that must be balanced (one of ``attributes``).
        target: optional content attribute that must stay independent of ``sensitive``.
        image_size: side of the square images fed to the model.
        center_crop: side of a center crop applied before resizing (e.g. 140 for aligned CelebA).
        batch_size: training batch size (a last train batch of a single image is dropped: BatchNorm cannot train
            on it).
        eval_batch_size: val/test batch size (default: ``batch_size``).
        num_workers: data loading processes; ``auto``: the usable CPU cores shared among the processes of the
            machine, less one for each process, at most 8.
        keep_if_any: keep only the images (of every split) with at least one of these attribute classes, e.g.
            ``{Blond_Hair: 1, Black_Hair: 1}``: the blond or black-haired faces (InvDiff's CelebA subset).
        train_group_ratio: subsample the train split so that (target, sensitive) groups follow this ratio,
            groups in target-major order, e.g. ``[1, 2, 2, 1]`` for (t0,s0), (t0,s1), (t1,s0), (t1,s1).
        max_samples_per_split: keep at most this many images of each split (a seeded random subset).
        horizontal_flip: random horizontal flips on the train split.
        synthetic: a synthetic dataset to write into ``root`` on first use (``prepare_data``).
        seed: seed of the subsampling and of the train split's order and flips, which depend only on
            ``(seed, epoch)``: a fit resumed from a checkpoint sees the samples an uninterrupted one would.
    """

    format: ClassVar[str] = ""
    layout: ClassVar[str] = ""

    def __init__(
        self,
        root: str,
        attributes: list[str],
        sensitive: str,
        target: str | None = None,
        image_size: int = 64,
        center_crop: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int | Literal["auto"] = "auto",
        keep_if_any: dict[str, int] | None = None,
        train_group_ratio: list[float] | None = None,
        max_samples_per_split: int | None = None,
        horizontal_flip: bool = True,
        synthetic: SyntheticDataset | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not attributes:
            raise ValueError("Option 'attributes' must name at least one attribute")
        if len(set(attributes)) != len(attributes):
            raise ValueError(f"Option 'attributes' has duplicates: {attributes}")
        if sensitive not in attributes:
            raise ValueError(f"Option 'sensitive' ({sensitive!r}) must be one of 'attributes': {attributes}")
        if target is not None and (target not in attributes or target == sensitive):
            raise ValueError(
                f"Option 'target' ({target!r}) must be one of 'attributes' {attributes} other than 'sensitive'"
            )
        unknown = [name for name in keep_if_any or {} if name not in attributes]
        if unknown:
            raise ValueError(f"Option 'keep_if_any' names {unknown}, which are not in 'attributes': {attributes}")
        if train_group_ratio is not None:
            if target is None:
                raise ValueError("Option 'train_group_ratio' needs a 'target' attribute")
            if not all(value > 0 for value in train_group_ratio):
                raise ValueError(f"Option 'train_group_ratio' must be positive, got {train_group_ratio}")
        if synthetic is not None and synthetic.format != self.format:
            raise ValueError(
                f"Option 'synthetic' writes the {synthetic.format!r} format but {type(self).__name__} "
                f"reads {self.format!r}"
            )
        sizes = {"image_size": image_size, "batch_size": batch_size, "eval_batch_size": eval_batch_size}
        check_ranges(positive=sizes | {"center_crop": center_crop, "max_samples_per_split": max_samples_per_split})
        if num_workers != "auto" and not (isinstance(num_workers, int) and num_workers >= 0):
            raise ValueError(f"Option 'num_workers' must be 'auto' or a non-negative number, got {num_workers!r}")
        self.save_hyperparameters(ignore=["synthetic"])
        self.root = Path(root).expanduser()
        self.attributes = list(attributes)
        self.sensitive = sensitive
        self.target = target
        self.image_size = image_size
        self.center_crop = center_crop
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.keep_if_any = dict(keep_if_any or {})
        self.train_group_ratio = train_group_ratio
        self.max_samples_per_split = max_samples_per_split
        self.horizontal_flip = horizontal_flip
        self.synthetic = synthetic
        self.seed = seed
        self._table: AttributeTable | None = None
        self._datasets: dict[str, AttributeImageDataset] = {}

    @abstractmethod
    def load_table(self) -> AttributeTable:
        """Parses the dataset's files under ``root`` (all attribute columns, all splits)."""

    def prepare_data(self) -> None:
        """Writes the synthetic dataset into ``root`` if one is configured and not there yet."""
        if self.synthetic is not None and self.synthetic.write(self.root):
            rank_zero_info(f"Wrote {type(self.synthetic).__name__} to {self.root}")

    @property
    def table(self) -> AttributeTable:
        """The parsed dataset table, restricted to ``attributes`` (read once)."""
        if self._table is None:
            full = self.load_table()
            columns = [full.column_index(name) for name in self.attributes]
            self._table = AttributeTable(
                full.image_paths, self.attributes, full.attributes[:, columns], full.splits, full.source
            )
        return self._table

    @property
    def num_classes(self) -> list[int]:
        """Number of classes of each attribute in ``attributes`` (at least 2)."""
        return [max(2, int(column.max()) + 1) for column in self.table.attributes.T]

    def split_indices(self, split: str) -> np.ndarray:
        """Returns the table rows of a split after resampling and capping."""
        if split not in SPLIT_CODES:
            raise ValueError(f"Unknown split {split!r}; expected one of {list(SPLIT_CODES)}")
        table = self.table
        kept = table.splits == SPLIT_CODES[split]
        if self.keep_if_any:
            kept &= np.any([table.column(name) == value for name, value in self.keep_if_any.items()], axis=0)
        rows = np.flatnonzero(kept)
        if len(rows) == 0:
            reason = f" with only the images of {self.keep_if_any}" if self.keep_if_any else ""
            raise ValueError(f"Split '{split}' of {table.source} is empty{reason}")
        if split == "train" and self.train_group_ratio is not None:
            sensitive_classes = self.num_classes[self.attributes.index(self.sensitive)]
            target_classes = self.num_classes[self.attributes.index(self.target)]
            if len(self.train_group_ratio) != sensitive_classes * target_classes:
                raise ValueError(
                    f"Option 'train_group_ratio' needs {sensitive_classes * target_classes} entries "
                    f"({target_classes} '{self.target}' x {sensitive_classes} '{self.sensitive}' classes), "
                    f"got {len(self.train_group_ratio)}"
                )
            groups = group_ids(table.column(self.target)[rows], table.column(self.sensitive)[rows], sensitive_classes)
            rows = rows[resample_to_ratio(groups, self.train_group_ratio, self.seed)]
        if self.max_samples_per_split is not None and len(rows) > self.max_samples_per_split:
            rng = np.random.default_rng(self.seed + SPLIT_CODES[split])
            rows = np.sort(rng.choice(rows, self.max_samples_per_split, replace=False))
        return rows

    def group_counts(self, split: str) -> np.ndarray:
        """Counts of (target, sensitive) groups in a split, shape ``(T, S)`` (``T = 1`` without target)."""
        rows = self.split_indices(split)
        num_sensitive = self.num_classes[self.attributes.index(self.sensitive)]
        sensitive = self.table.column(self.sensitive)[rows]
        if self.target is None:
            return np.bincount(sensitive, minlength=num_sensitive)[None, :]
        num_target = self.num_classes[self.attributes.index(self.target)]
        groups = group_ids(self.table.column(self.target)[rows], sensitive, num_sensitive)
        return np.bincount(groups, minlength=num_target * num_sensitive).reshape(num_target, num_sensitive)

    def describe(self, split: str) -> str:
        """A short text table of the group counts and proportions of a split."""
        counts = self.group_counts(split)
        total = counts.sum()
        lines = [f"{type(self).__name__} '{split}' split: {total} images ({self.root})"]
        for target_class, row in enumerate(counts):
            prefix = f"{self.target}={target_class}, " if self.target is not None else ""
            for sensitive_class, count in enumerate(row):
                lines.append(f"  {prefix}{self.sensitive}={sensitive_class}: {count} ({count / total:.1%})")
        return "\n".join(lines)

    @cached_property
    def center_crop_fraction(self) -> float:
        """The view of the source images it loads: the side of the centred square kept, over their shorter side.

        1 without ``center_crop`` (the transform keeps the centred square of the shorter side); with it,
        ``center_crop`` over the shorter side of the dataset's first image (a dataset such as CelebA has one size).
        """
        if self.center_crop is None:
            return 1.0
        path = self.table.image_paths[0]
        with Image.open(path) as image:
            side = min(image.size)
        if self.center_crop > side:
            raise ValueError(
                f"Option 'center_crop' ({self.center_crop}) is larger than the shorter side of the images ({side} "
                f"pixels in '{path}'): the crop would pad them with black"
            )
        return self.center_crop / side

    def transform(self, train: bool) -> v2.Compose:
        """The image transform of a split: crop, resize, optional flip, scaling to [-1, 1]."""
        steps: list[torch.nn.Module] = [v2.PILToTensor()]
        if self.center_crop is not None:
            steps.append(v2.CenterCrop(self.center_crop))
        steps += [v2.Resize(self.image_size, antialias=True), v2.CenterCrop(self.image_size)]
        if train and self.horizontal_flip:
            steps.append(v2.RandomHorizontalFlip())
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)]
        return v2.Compose(steps)

    def dataset(self, split: str) -> AttributeImageDataset:
        """The dataset of a split (``train``, ``val`` or ``test``), built once."""
        if split not in self._datasets:
            rows = self.split_indices(split)
            paths = [self.table.image_paths[row] for row in rows]
            missing = [path for path in paths if not path.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} image(s) of split '{split}' listed in {self.table.source} are missing, "
                    f"e.g. '{missing[0]}'"
                )
            self._datasets[split] = AttributeImageDataset(
                paths, self.table.attributes[rows], rows, self.transform(train=split == "train")
            )
        return self._datasets[split]

    def setup(self, stage: str) -> None:
        """Builds the datasets the stage needs and reports the train split's group counts."""
        if stage == "fit":
            self.dataset("train")
            self.dataset("val")
            rank_zero_info(self.describe("train"))
        elif stage == "validate":
            self.dataset("val")
        else:
            self.dataset("test")

    def _loader(self, split: str) -> DataLoader:
        workers = {"num_workers": self.workers, "persistent_workers": self.workers > 0}
        if split == "train":
            items, sampler = self._train_order(self.dataset(split))
            drop_last = self._single_image_last_batch(len(items))
            return EpochLoader(items, batch_size=self.batch_size, sampler=sampler, drop_last=drop_last, **workers)
        return DataLoader(self.dataset(split), batch_size=self.eval_batch_size, **workers)

    def _train_order(self, dataset: AttributeImageDataset) -> tuple[EpochItems, EpochSampler]:
        """The train split in an order and with flips drawn from ``(seed, epoch)``, from where a restored fit is."""
        trainer = self.trainer
        items = EpochItems(dataset, self.seed)
        num_replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

        def start() -> tuple[int, int]:
            epoch, batches_done = resume_position(trainer)
            return epoch, batches_done * self.batch_size

        return items, EpochSampler(items, num_replicas, rank, self.seed, start)

    @property
    def workers(self) -> int:
        """Data-loading processes of each loader (``num_workers``, with ``auto`` resolved for this machine)."""
        if self.num_workers != "auto":
            return self.num_workers
        return available_workers(self.trainer.num_devices if self.trainer is not None else 1)

    def _single_image_last_batch(self, num_images: int) -> bool:
        """Whether each process's last train batch holds one image (dropped: BatchNorm cannot train on it)."""
        processes = self.trainer.world_size if self.trainer is not None else 1
        per_process = math.ceil(num_images / processes)
        if per_process < 2:
            raise ValueError(
                f"The train split of '{self.root}' has {num_images} image(s): too few to train on {processes} "
                "process(es), each batch needs at least 2"
            )
        return per_process % self.batch_size == 1

    def train_dataloader(self) -> DataLoader:
        """Train split, shuffled anew every epoch (see :class:`~lightning_fair.data.epochs.EpochSampler`)."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        """Validation split, in order."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test split, in order."""
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """Test split, in order."""
        return self._loader("test")
