"""CelebA in its official on-disk format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightning_fair.data.base import AttributeDataModule
from lightning_fair.data.table import AttributeTable, require_files

IMAGE_FOLDER = "img_align_celeba"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"

CELEBA_ATTRIBUTES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]


def read_celeba_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Parses ``list_attr_celeba.txt``.

    The first line is the image count, the second the attribute names, then one row per image: the file
    name followed by one value per attribute, -1 or 1, separated by runs of spaces.

    Returns:
        File names, attribute names and labels mapped to 0/1, shape ``(N, A)``.
    """
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and an attribute-name line")
    try:
        count = int(lines[0].strip())
    except ValueError as error:
        raise ValueError(f"{path}, line 1: expected the image count, got {lines[0]!r}") from error
    names = lines[1].split()
    rows = lines[2:]
    if len(rows) != count:
        raise ValueError(f"{path}: line 1 announces {count} images but {len(rows)} rows follow")
    files, values = [], []
    for line_number, line in enumerate(rows, start=3):
        fields = line.split()
        if len(fields) != len(names) + 1:
            raise ValueError(
                f"{path}, line {line_number}: expected a file name and {len(names)} values, got {len(fields)} fields"
            )
        files.append(fields[0])
        values.append(fields[1:])
    try:
        labels = np.asarray(values, dtype=np.int64).reshape(len(files), len(names))
    except ValueError as error:
        raise ValueError(f"{path}: attribute values must be -1 or 1 ({error})") from error
    invalid = np.argwhere((labels != 1) & (labels != -1))
    if len(invalid):
        row, column = invalid[0]
        raise ValueError(
            f"{path}, line {row + 3}: attribute '{names[column]}' is {labels[row, column]}; expected -1 or 1"
        )
    return files, names, (labels + 1) // 2


def read_celeba_partition(path: Path) -> dict[str, int]:
    """Parses ``list_eval_partition.txt`` (rows ``file split`` with 0 train, 1 val, 2 test)."""
    partition = {}
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in {"0", "1", "2"}:
            raise ValueError(f"{path}, line {line_number}: expected '<file> <0|1|2>', got {line!r}")
        partition[fields[0]] = int(fields[1])
    return partition


class CelebADataModule(AttributeDataModule):
    """CelebA (or any dataset written in its format, such as the embedded ``SyntheticFaces``).

    Reads ``img_align_celeba/``, ``list_attr_celeba.txt`` and ``list_eval_partition.txt`` under ``root``;
    attributes are chosen by name among the header of ``list_attr_celeba.txt``, -1/1 mapped to 0/1.
    """

    format = "celeba"
    layout = (
        f"  {IMAGE_FOLDER}/000001.jpg ...\n"
        f"  {ATTRIBUTE_FILE}   (count line, attribute-name line, rows '<file> -1 1 ...')\n"
        f"  {PARTITION_FILE} (rows '<file> <0 train|1 val|2 test>')"
    )

    def load_table(self) -> AttributeTable:
        """Parses the attribute and partition files."""
        require_files(self.root, [IMAGE_FOLDER, ATTRIBUTE_FILE, PARTITION_FILE], self.layout)
        files, names, labels = read_celeba_attributes(self.root / ATTRIBUTE_FILE)
        partition = read_celeba_partition(self.root / PARTITION_FILE)
        missing = [name for name in files if name not in partition]
        if missing:
            raise ValueError(
                f"{self.root / PARTITION_FILE} has no split for {len(missing)} image(s), e.g. '{missing[0]}'"
            )
        splits = np.asarray([partition[name] for name in files], dtype=np.int64)
        paths = [self.root / IMAGE_FOLDER / name for name in files]
        return AttributeTable(paths, names, labels, splits, self.root / ATTRIBUTE_FILE)
