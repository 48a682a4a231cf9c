"""Shared fixtures: tiny synthetic datasets written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_fair.data import SyntheticFaces, SyntheticWaterbirds

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
