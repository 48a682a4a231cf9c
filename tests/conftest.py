"""Shared fixtures: tiny synthetic datasets written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_fair.classifiers import AttributeClassifier
from lightning_fair.data import SyntheticFaces, SyntheticWaterbirds
from lightning_fair.methods import DiffusionPretraining

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def faces_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-image SyntheticFaces dataset in the CelebA format."""
    root = tmp_path_factory.mktemp("data") / "faces"
    SyntheticFaces(num_images=300, seed=3).write(root)
    return root


@pytest.fixture(scope="session")
def waterbirds_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 200-image SyntheticWaterbirds dataset in the Waterbirds format."""
    root = tmp_path_factory.mktemp("data") / "waterbirds"
    SyntheticWaterbirds(num_images=200, seed=3).write(root)
    return root


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised, tiny UNet conditional on Male (with a null label), in diffusers format."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "unet"
    module = DiffusionPretraining(
        output_dir=str(folder),
        block_out_channels=(8, 16),
        norm_num_groups=4,
        attributes=["Male"],
        condition_attribute="Male",
    )
    return module.export(folder)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised, tiny attribute classifier of Male and Blond_Hair, as a pretrained folder."""
    torch.manual_seed(0)
    classifier = AttributeClassifier(["Male", "Blond_Hair"], model_name="test_resnet", image_size=32)
    return classifier.save_pretrained(tmp_path_factory.mktemp("models") / "classifier")
