"""The embedded synthetic datasets: formats, determinism, bias, atomic writing."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from lightning_fair.data import CelebADataModule, SyntheticFaces, SyntheticWaterbirds
from lightning_fair.data.celeba import CELEBA_ATTRIBUTES, read_celeba_attributes


def test_faces_are_in_celeba_format(faces_root: Path) -> None:
    files, names, labels = read_celeba_attributes(faces_root / "list_attr_celeba.txt")
    assert names == CELEBA_ATTRIBUTES
    assert len(files) == 300
    assert all((faces_root / "img_align_celeba" / name).is_file() for name in files)
    rendered = ["Male", "Blond_Hair", "Eyeglasses", "Smiling"]
    for name in rendered:
        assert 0 < labels[:, names.index(name)].mean() < 1, name
    assert (labels[:, names.index("Young")] == 0).all()  # not rendered: written as -1
    np.testing.assert_array_equal(labels[:, names.index("No_Beard")], 1 - labels[:, names.index("Male")])


def test_waterbirds_are_in_waterbirds_format(waterbirds_root: Path) -> None:
    with (waterbirds_root / "metadata.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["img_id", "img_filename", "y", "split", "place", "place_filename"]
    assert len(rows) == 200
    assert {row["split"] for row in rows} == {"0", "1", "2"}
    assert all((waterbirds_root / row["img_filename"]).is_file() for row in rows)


def test_same_seed_same_files(tmp_path: Path) -> None:
    for name, seed in [("a", 5), ("b", 5), ("c", 6)]:
        SyntheticFaces(num_images=20, seed=seed).write(tmp_path / name)
    image = "img_align_celeba/000007.png"
    assert (tmp_path / "a" / image).read_bytes() == (tmp_path / "b" / image).read_bytes()
    assert (tmp_path / "a" / image).read_bytes() != (tmp_path / "c" / image).read_bytes()
    attributes = "list_attr_celeba.txt"
    assert (tmp_path / "a" / attributes).read_text() == (tmp_path / "b" / attributes).read_text()


def test_faces_train_bias_and_balanced_test() -> None:
    labels, splits = SyntheticFaces(num_images=20000, seed=0).sample_labels()
    male = labels[:, CELEBA_ATTRIBUTES.index("Male")] == 1
    blond = labels[:, CELEBA_ATTRIBUTES.index("Blond_Hair")] == 1
    train, test = splits == 0, splits == 2
    assert abs(male[train].mean() - 0.25) < 0.015
    assert abs(blond[train & ~male].mean() - 0.45) < 0.02
    assert abs(blond[train & male].mean() - 0.05) < 0.015
    assert abs(male[test].mean() - 0.5) < 0.04
    assert abs(blond[test & male].mean() - blond[test & ~male].mean()) < 0.08
    assert np.bincount(splits).tolist() == [16000, 2000, 2000]


def test_waterbirds_spurious_correlation() -> None:
    bird, place, splits = SyntheticWaterbirds(num_images=12000, seed=0).sample_labels()
    train, test = splits == 0, splits == 2
    assert abs((bird[train] == place[train]).mean() - 0.95) < 0.01
    for y in (0, 1):
        for background in (0, 1):
            share = ((bird[test] == y) & (place[test] == background)).mean()
            assert abs(share - 0.25) < 0.03


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: SyntheticFaces, folder: Path) -> None:
        (folder / "partial.txt").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(SyntheticFaces, "_write_files", fail)
    with pytest.raises(KeyboardInterrupt):
        SyntheticFaces(num_images=10).write(tmp_path / "faces")
    assert list(tmp_path.iterdir()) == []


def test_other_settings_or_foreign_folder_are_refused(tmp_path: Path) -> None:
    SyntheticFaces(num_images=10, seed=1).write(tmp_path / "faces")
    assert not SyntheticFaces(num_images=10, seed=1).write(tmp_path / "faces")
    with pytest.raises(FileExistsError, match="written with other settings"):
        SyntheticFaces(num_images=10, seed=2).write(tmp_path / "faces")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "list_attr_celeba.txt").write_text("0\n")
    with pytest.raises(FileExistsError, match="not empty and was not written by SyntheticFaces"):
        SyntheticFaces(num_images=10).write(tmp_path / "real")


def test_generated_on_first_use_by_the_datamodule(tmp_path: Path) -> None:
    datamodule = CelebADataModule(
        root=str(tmp_path / "faces"),
        attributes=["Male"],
        sensitive="Male",
        image_size=32,
        synthetic=SyntheticFaces(num_images=30, seed=0),
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert len(datamodule.dataset("train")) == 24
