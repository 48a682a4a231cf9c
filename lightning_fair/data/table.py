"""The in-memory form every on-disk dataset format is parsed into."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class AttributeTable:
    """Image paths with integer attribute labels and a split code per image.

    Attributes:
        image_paths: absolute path of each image.
        attribute_names: names of the columns of ``attributes``.
        attributes: integer labels, shape ``(N, len(attribute_names))``, classes ``0..K-1``.
        splits: split code per image (0 train, 1 val, 2 test), shape ``(N,)``.
        source: the file the table was read from, named in error messages.
    """

    image_paths: list[Path]
    attribute_names: list[str]
    attributes: np.ndarray
    splits: np.ndarray
    source: Path

    def column(self, name: str) -> np.ndarray:
        """Returns the labels of one attribute, or raises a ``ValueError`` listing the valid names."""
        return self.attributes[:, self.column_index(name)]

    def column_index(self, name: str) -> int:
        """Returns the column of an attribute, or raises a ``ValueError`` listing the valid names."""
        if name not in self.attribute_names:
            raise ValueError(
                f"Unknown attribute '{name}' for {self.source}; valid names: {', '.join(self.attribute_names)}"
            )
        return self.attribute_names.index(name)


def require_files(root: Path, names: list[str], layout: str) -> None:
    """Raises a ``FileNotFoundError`` naming the missing path and the expected layout.

    Args:
        root: dataset folder.
        names: files or folders expected inside ``root``.
        layout: a description of the expected layout for the message.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset root '{root}' does not exist. Expected layout:\n{layout}")
    for name in names:
        if not (root / name).exists():
            raise FileNotFoundError(f"Missing '{root / name}'. Expected layout under '{root}':\n{layout}")


def read_csv_table(
    csv_path: Path,
    image_root: Path,
    image_column: str,
    split_column: str,
    split_values: dict[str, str],
    attribute_columns: list[str],
) -> AttributeTable:
    """Reads a CSV with an image-path column, a split column and integer attribute columns.

    Args:
        csv_path: the CSV file (with a header row).
        image_root: folder the image paths are relative to.
        image_column: column holding the image path.
        split_column: column holding the split of each row.
        split_values: the value of ``split_column`` meaning ``train``, ``val`` and ``test``.
        attribute_columns: integer attribute columns to read; every other column is ignored.

    Returns:
        The parsed table.
    """
    unknown_splits = set(split_values) - set(SPLIT_CODES)
    if unknown_splits or not split_values:
        raise ValueError(f"split_values must map some of {list(SPLIT_CODES)} to values, got {split_values}")
    code_of_value = {str(value): SPLIT_CODES[name] for name, value in split_values.items()}
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for column in [image_column, split_column]:
            if column not in header:
                raise ValueError(f"Column '{column}' not found in {csv_path}; columns: {', '.join(header)}")
        for column in attribute_columns:
            if column not in header:
                raise ValueError(f"Unknown attribute '{column}' for {csv_path}; valid names: {', '.join(header)}")
        paths, labels, splits = [], [], []
        for line_number, row in enumerate(reader, start=2):
            split = code_of_value.get(row[split_column].strip(), -1)
            try:
                labels.append([int(row[column]) for column in attribute_columns])
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"{csv_path}, line {line_number}: attribute values must be integers ({error})"
                ) from error
            paths.append(image_root / row[image_column].strip())
            splits.append(split)
    attributes = np.asarray(labels, dtype=np.int64).reshape(len(paths), len(attribute_columns))
    if (attributes < 0).any():
        column = attribute_columns[int(np.argwhere(attributes < 0)[0, 1])]
        raise ValueError(f"{csv_path}: attribute '{column}' has negative values; expected classes 0..K-1")
    return AttributeTable(paths, list(attribute_columns), attributes, np.asarray(splits, np.int64), csv_path)
