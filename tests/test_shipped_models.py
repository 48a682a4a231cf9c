"""The models shipped in the package: each loads by name, has a model card, and all stay small."""

from __future__ import annotations

import pytest

from lightning_fair.backbones import load_backbone
from lightning_fair.classifiers import load_classifier
from lightning_fair.models import SHIPPED_MODELS_DIR, shipped_models

MAX_TOTAL_MEGABYTES = 40


def test_shipped_models_stay_small() -> None:
    total = sum(path.stat().st_size for path in SHIPPED_MODELS_DIR.rglob("*") if path.is_file())
    assert total < MAX_TOTAL_MEGABYTES * 2**20, f"the shipped models take {total / 2**20:.1f} MB"


@pytest.mark.parametrize("name", shipped_models())
def test_shipped_model_loads_by_name_and_has_a_model_card(name: str) -> None:
    assert (SHIPPED_MODELS_DIR / name / "README.md").is_file()
    if name.endswith("_classifier"):
        assert load_classifier(name).attributes
    else:
        backbone = load_backbone(name)
        assert backbone.conditioning in ("class", "text")
        assert backbone.image_shape == (3, 32, 32)
