"""Any image folder described by a CSV of attribute labels."""

from __future__ import annotations

from typing import Literal

from lightning_fair.data.base import AttributeDataModule
from lightning_fair.data.table import AttributeTable, read_csv_table, require_files


class AttributeCSVDataModule(AttributeDataModule):
    """A folder of images and a CSV with an image-path column, a split column and integer attributes.

    Fits FairFace, UTKFace or a user's own data once their labels are written as integer columns.
    See :class:`~lightning_fair.data.base.AttributeDataModule` for the shared options.

    Args:
        root: dataset folder; image paths in the CSV are relative to it.
        attributes: attribute columns to load.
        sensitive: the attribute that must be balanced.
        target: optional content attribute.
        csv_file: the CSV file, relative to ``root``.
        image_column: column with the image paths.
        split_column: column with the split of each row.
        split_values: the values of ``split_column`` that mean ``train``, ``val`` and ``test``.
        image_size: side of the square images fed to the model.
        center_crop: side of a center crop applied before resizing.
        batch_size: training batch size.
        eval_batch_size: val/test batch size (default: ``batch_size``).
        num_workers: data loading processes; ``auto``: the usable CPU cores shared among the processes of the
            machine, less one for each process, at most 8.
        keep_if_any: keep only the images (of every split) with at least one of these attribute classes.
        train_group_ratio: subsample the train split to this (target, sensitive) group ratio.
        max_samples_per_split: keep at most this many images of each split.
        horizontal_flip: random horizontal flips on the train split.
        seed: seed of the subsampling.
    """

    format = "csv"

    def __init__(
        self,
        root: str,
        attributes: list[str],
        sensitive: str,
        target: str | None = None,
        csv_file: str = "labels.csv",
        image_column: str = "image",
        split_column: str = "split",
        split_values: dict[str, str] | None = None,
        image_size: int = 64,
        center_crop: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int | Literal["auto"] = "auto",
        keep_if_any: dict[str, int] | None = None,
        train_group_ratio: list[float] | None = None,
        max_samples_per_split: int | None = None,
        horizontal_flip: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(
            root=root,
            attributes=attributes,
            sensitive=sensitive,
            target=target,
            image_size=image_size,
            center_crop=center_crop,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            keep_if_any=keep_if_any,
            train_group_ratio=train_group_ratio,
            max_samples_per_split=max_samples_per_split,
            horizontal_flip=horizontal_flip,
            synthetic=None,
            seed=seed,
        )
        self.csv_file = csv_file
        self.image_column = image_column
        self.split_column = split_column
        self.split_values = split_values or {"train": "train", "val": "val", "test": "test"}

    @property
    def layout(self) -> str:  # type: ignore[override]
        """The expected layout, with this module's column names."""
        return (
            f"  {self.csv_file} (header with '{self.image_column}', '{self.split_column}' "
            f"and integer attribute columns {self.attributes})\n  images at the paths of '{self.image_column}'"
        )

    def load_table(self) -> AttributeTable:
        """Parses the CSV file."""
        require_files(self.root, [self.csv_file], self.layout)
        return read_csv_table(
            self.root / self.csv_file,
            image_root=self.root,
            image_column=self.image_column,
            split_column=self.split_column,
            split_values=self.split_values,
            attribute_columns=self.attributes,
        )
