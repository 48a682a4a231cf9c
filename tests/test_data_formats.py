"""Parsers of the real on-disk formats, on hand-written fixture files."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_fair.data import AttributeCSVDataModule, CelebADataModule, WaterbirdsDataModule
from lightning_fair.data.celeba import read_celeba_attributes, read_celeba_partition

FIXTURES = Path(__file__).parent / "fixtures"


def test_celeba_attribute_file_with_irregular_spacing() -> None:
    files, names, labels = read_celeba_attributes(FIXTURES / "celeba_format" / "list_attr_celeba.txt")
    assert files == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert names == ["5_o_Clock_Shadow", "Male", "Blond_Hair", "Smiling"]
    np.testing.assert_array_equal(labels, [[0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 0, 1]])


def test_celeba_partition_file() -> None:
    partition = read_celeba_partition(FIXTURES / "celeba_format" / "list_eval_partition.txt")
    assert partition == {"000001.jpg": 0, "000002.jpg": 1, "000003.jpg": 2}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("2\nMale Smiling\n000001.jpg 1 -1\n", "announces 2 images but 1 rows"),
        ("x\nMale\n", "line 1: expected the image count"),
        ("1\nMale Smiling\n000001.jpg 1\n", "line 3: expected a file name and 2 values, got 2 fields"),
        ("1\nMale Smiling\n000001.jpg 1 0\n", "attribute 'Smiling' is 0; expected -1 or 1"),
        ("1\nMale Smiling\n000001.jpg 1 yes\n", "must be -1 or 1"),
    ],
)
def test_celeba_attribute_file_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        read_celeba_attributes(path)
    assert str(path) in str(error.value)


def test_celeba_partition_errors(tmp_path: Path) -> None:
    path = tmp_path / "list_eval_partition.txt"
    path.write_text("000001.jpg 0\n000002.jpg 3\n")
    with pytest.raises(ValueError, match=re.escape("line 2: expected '<file> <0|1|2>'")):
        read_celeba_partition(path)


def test_celeba_datamodule_batches() -> None:
    datamodule = CelebADataModule(
        root=str(FIXTURES / "celeba_format"),
        attributes=["Smiling", "Male"],
        sensitive="Male",
        image_size=16,
        center_crop=140,
    )
    for split, row in [("train", 0), ("val", 1), ("test", 2)]:
        item = datamodule.dataset(split)[0]
        assert item["image"].shape == (3, 16, 16)
        assert item["image"].dtype == torch.float32
        assert int(item["index"]) == row
    # Fixture image 2 (the val split) is pure green: [-1, 1] scaling gives (-1, 1, -1), JPEG rounding aside.
    green = datamodule.dataset("val")[0]["image"]
    torch.testing.assert_close(green.mean(dim=(1, 2)), torch.tensor([-1.0, 1.0, -1.0]), atol=0.03, rtol=0)
    # Attributes come in the order of the `attributes` option, not of the file.
    assert datamodule.dataset("train")[0]["attributes"].tolist() == [1, 1]
    assert datamodule.dataset("test")[0]["attributes"].tolist() == [1, 0]
    assert datamodule.num_classes == [2, 2]


def test_celeba_partition_missing_an_image(tmp_path: Path) -> None:
    root = tmp_path / "celeba"
    shutil.copytree(FIXTURES / "celeba_format", root)
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 1\n")
    datamodule = CelebADataModule(root=str(root), attributes=["Male"], sensitive="Male")
    with pytest.raises(ValueError, match="no split for 1 image.*000003.jpg"):
        datamodule.setup("test")


def test_waterbirds_datamodule() -> None:
    datamodule = WaterbirdsDataModule(
        root=str(FIXTURES / "waterbirds_format"), attributes=["y", "place"], sensitive="place", image_size=8
    )
    table = datamodule.table
    assert [path.name for path in table.image_paths][:2] == [
        "Black_Footed_Albatross_0046_18.jpg",
        "Cardinal_0001_17057.jpg",
    ]
    np.testing.assert_array_equal(table.attributes, [[1, 1], [0, 0], [0, 1], [1, 0]])
    np.testing.assert_array_equal(table.splits, [0, 0, 1, 2])
    assert datamodule.dataset("train")[1]["image"].shape == (3, 8, 8)
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["attributes"].tolist() == [[0, 1]]
    assert batch["index"].tolist() == [2]


def test_csv_datamodule(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "waterbirds_format", tmp_path, dirs_exist_ok=True)
    (tmp_path / "labels.csv").write_text(
        "file,race,gender,fold\n"
        "017.Cardinal/Cardinal_0001_17057.jpg,4,1,train\n"
        "017.Cardinal/Cardinal_0002_17058.jpg,6,0,train\n"
        "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg,0,1,eval\n"
    )
    datamodule = AttributeCSVDataModule(
        root=str(tmp_path),
        attributes=["gender", "race"],
        sensitive="race",
        csv_file="labels.csv",
        image_column="file",
        split_column="fold",
        split_values={"train": "train", "test": "eval"},
        image_size=8,
    )
    assert datamodule.num_classes == [2, 7]
    assert datamodule.dataset("train").attributes.tolist() == [[1, 4], [0, 6]]
    assert datamodule.dataset("test").attributes.tolist() == [[1, 0]]
    with pytest.raises(ValueError, match="Split 'val' .* is empty"):
        datamodule.dataset("val")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a.jpg,x,0", "line 2: attribute values must be integers"),
        ("a.jpg,-1,0", "attribute 'gender' has negative values"),
    ],
)
def test_csv_value_errors(tmp_path: Path, row: str, message: str) -> None:
    (tmp_path / "labels.csv").write_text(f"image,gender,split\n{row}\n")
    datamodule = AttributeCSVDataModule(root=str(tmp_path), attributes=["gender"], sensitive="gender")
    with pytest.raises(ValueError, match=message):
        _ = datamodule.table


def test_csv_missing_column(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("path,gender,split\na.jpg,1,train\n")
    datamodule = AttributeCSVDataModule(root=str(tmp_path), attributes=["gender"], sensitive="gender")
    with pytest.raises(ValueError, match="Column 'image' not found in .*labels.csv; columns: path, gender, split"):
        _ = datamodule.table
