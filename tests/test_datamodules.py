"""Shared DataModule behaviour: options, errors, resampling, the batch contract."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_fair.data import CelebADataModule, SyntheticFaces, SyntheticWaterbirds, WaterbirdsDataModule
from lightning_fair.data.resampling import resample_to_ratio


def faces(root: Path, **options: object) -> CelebADataModule:
    settings = {"attributes": ["Male", "Blond_Hair"], "sensitive": "Male", "target": "Blond_Hair", "image_size": 32}
    return CelebADataModule(root=str(root), **{**settings, **options})  # type: ignore[arg-type]


def test_batch_contract(faces_root: Path) -> None:
    datamodule = faces(faces_root, batch_size=8, attributes=["Blond_Hair", "Male", "Eyeglasses"])
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32)
    assert batch["image"].dtype == torch.float32
    assert -1.0 <= batch["image"].min() < batch["image"].max() <= 1.0
    assert batch["attributes"].shape == (8, 3)
    assert batch["attributes"].dtype == torch.long
    # Columns follow the `attributes` option: compare with the parsed table rows of the batch.
    table = datamodule.load_table()
    expected = [[table.column(name)[int(i)] for name in ["Blond_Hair", "Male", "Eyeglasses"]] for i in batch["index"]]
    assert batch["attributes"].tolist() == expected


def test_flip_only_on_train(faces_root: Path) -> None:
    datamodule = faces(faces_root)
    train_steps = [type(step).__name__ for step in datamodule.transform(train=True).transforms]
    eval_steps = [type(step).__name__ for step in datamodule.transform(train=False).transforms]
    assert "RandomHorizontalFlip" in train_steps
    assert "RandomHorizontalFlip" not in eval_steps
    no_flip = faces(faces_root, horizontal_flip=False)
    assert "RandomHorizontalFlip" not in [type(s).__name__ for s in no_flip.transform(train=True).transforms]


def test_missing_root_names_path_and_layout(tmp_path: Path) -> None:
    datamodule = faces(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere' does not exist. Expected layout:\n.*img_align_celeba"):
        datamodule.setup("fit")


def test_missing_file_names_it(faces_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "faces"
    shutil.copytree(faces_root, root)
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match="Missing '.*list_eval_partition.txt'"):
        faces(root).setup("fit")


def test_unknown_attribute_lists_valid_names(faces_root: Path) -> None:
    datamodule = faces(faces_root, attributes=["Male", "Blonde"], target=None)
    with pytest.raises(ValueError, match="Unknown attribute 'Blonde' .*valid names: 5_o_Clock_Shadow, .*Blond_Hair"):
        datamodule.setup("fit")


def test_missing_image_is_named(faces_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "faces"
    shutil.copytree(faces_root, root)
    (root / "img_align_celeba" / "000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="missing, e.g. '.*000001.png'"):
        faces(root).setup("fit")


def test_unreadable_image_is_named(faces_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "faces"
    shutil.copytree(faces_root, root)
    (root / "img_align_celeba" / "000002.png").write_bytes(b"not an image")
    dataset = faces(root).dataset("train")
    with pytest.raises(RuntimeError, match="Cannot read image '.*000002.png'"):
        dataset[1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sensitive": "Smiling"}, "'sensitive' .* must be one of 'attributes'"),
        ({"target": "Male"}, "'target' .* other than 'sensitive'"),
        ({"attributes": []}, "at least one attribute"),
        ({"attributes": ["Male", "Male"]}, "duplicates"),
        ({"train_group_ratio": [1, 2, 0, 1]}, "'train_group_ratio' must be positive"),
        ({"train_group_ratio": [1, 2], "target": None}, "'train_group_ratio' needs a 'target'"),
        ({"synthetic": SyntheticWaterbirds()}, "writes the 'waterbirds' format but CelebADataModule reads 'celeba'"),
        ({"batch_size": 0}, "'batch_size' must be positive"),
        ({"keep_if_any": {"Black_Hair": 1}}, "'keep_if_any' names \\['Black_Hair'\\], which are not in 'attributes'"),
    ],
)
def test_invalid_options(faces_root: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        faces(faces_root, **options)


def test_ratio_of_wrong_length(faces_root: Path) -> None:
    datamodule = faces(faces_root, train_group_ratio=[1, 2, 2])
    with pytest.raises(ValueError, match="needs 4 entries .*got 3"):
        datamodule.setup("fit")


def test_resampling_to_ratio(faces_root: Path) -> None:
    datamodule = faces(faces_root, train_group_ratio=[1, 2, 2, 1])
    counts = datamodule.group_counts("train")
    # Group order is target-major: (Blond 0, Male 0), (0, 1), (1, 0), (1, 1).
    flat = counts.flatten()
    assert flat.sum() > 0
    np.testing.assert_array_equal(flat, flat[0] * np.array([1, 2, 2, 1]))
    original = faces(faces_root).group_counts("train").flatten()
    assert (flat <= original).all()
    # The smallest group relative to its weight is kept whole.
    assert (flat == original).any()


def test_resample_to_ratio_exact() -> None:
    groups = np.array([0] * 10 + [1] * 7 + [2] * 30)
    kept = resample_to_ratio(groups, [1, 1, 2], seed=0)
    np.testing.assert_array_equal(np.bincount(groups[kept]), [7, 7, 14])
    assert len(np.unique(kept)) == len(kept)
    np.testing.assert_array_equal(kept, resample_to_ratio(groups, [1, 1, 2], seed=0))
    with pytest.raises(ValueError, match="groups \\[1\\] have no samples"):
        resample_to_ratio(np.array([0, 2, 2]), [1, 1, 1], seed=0)


def test_keep_if_any_keeps_images_with_one_of_the_classes(faces_root: Path) -> None:
    hair = ["Male", "Blond_Hair", "Black_Hair"]
    everything = faces(faces_root, attributes=hair)
    kept = faces(faces_root, attributes=hair, keep_if_any={"Blond_Hair": 1, "Black_Hair": 1})
    for split in ("train", "test"):
        rows = everything.split_indices(split)
        labels = everything.table.attributes[rows]
        expected = rows[(labels[:, 1] == 1) | (labels[:, 2] == 1)]
        assert 0 < len(expected) < len(rows)  # the brown-haired faces are left out
        np.testing.assert_array_equal(kept.split_indices(split), expected)
    resampled = faces(faces_root, attributes=hair, keep_if_any={"Black_Hair": 1}, train_group_ratio=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="groups \\[2, 3\\] have no samples"):  # no blond face is black-haired
        resampled.split_indices("train")


def test_max_samples_per_split(faces_root: Path) -> None:
    datamodule = faces(faces_root, max_samples_per_split=10)
    rows = datamodule.split_indices("train")
    assert len(rows) == 10
    assert len(datamodule.dataset("test")) == 10
    np.testing.assert_array_equal(rows, faces(faces_root, max_samples_per_split=10).split_indices("train"))


def test_prepare_data_writes_synthetic_data(tmp_path: Path) -> None:
    datamodule = WaterbirdsDataModule(
        root=str(tmp_path / "wb"),
        attributes=["y", "place"],
        sensitive="place",
        target="y",
        image_size=32,
        synthetic=SyntheticWaterbirds(num_images=60, seed=1),
    )
    datamodule.prepare_data()
    datamodule.setup("test")
    assert len(datamodule.dataset("test")) == 12
    datamodule.prepare_data()  # already written: nothing happens
    assert describe_lists_counts(datamodule)


def describe_lists_counts(datamodule: WaterbirdsDataModule) -> bool:
    text = datamodule.describe("train")
    counts = datamodule.group_counts("train")
    return all(f": {count} (" in text for count in counts.flatten())


def test_synthetic_faces_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="'male_probability' must be a probability"):
        SyntheticFaces(male_probability=1.5)
    with pytest.raises(ValueError, match="split_fractions must be 3 positive numbers summing to 1"):
        SyntheticFaces(split_fractions=(0.5, 0.5, 0.5))
