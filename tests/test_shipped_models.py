"""The models shipped in the package: each loads by name, has a model card, and all stay small."""

from __future__ import annotations

import pytest

from lightning_fair.backbones import load_backbone
from lightning_fair.classifiers import load_classifier
from lightning_fair.methods import method_registry
from lightning_fair.models import SHIPPED_MODELS_DIR, read_checkpoint, shipped_models
from lightning_fair.report.runs import given_fit

MAX_TOTAL_MEGABYTES = 40


def test_shipped_models_stay_small() -> None:
    total = sum(path.stat().st_size for path in SHIPPED_MODELS_DIR.rglob("*") if path.is_file())
    assert total < MAX_TOTAL_MEGABYTES * 2**20, f"the shipped models take {total / 2**20:.1f} MB"


@pytest.mark.parametrize("name", shipped_models())
def test_shipped_model_loads_by_name_and_has_a_model_card(name: str) -> None:
    assert (SHIPPED_MODELS_DIR / name / "README.md").is_file()
    if name.endswith(("_classifier", "_clip")):  # a trained classifier, or a CLIP folder with its class prompts
        assert load_classifier(name).attributes
    elif name.endswith("_fits"):  # fitted method modules: one fit folder per method, each testable by name
        for folder in sorted(path for path in (SHIPPED_MODELS_DIR / name).iterdir() if path.is_dir()):
            checkpoint_path, diagnostics = given_fit(f"{name}/{folder.name}")
            checkpoint = read_checkpoint(checkpoint_path, "checkpoints")
            assert method_registry()[folder.name].__name__ == checkpoint["lightning_fair"]["method"]
            assert "optimizer_states" not in checkpoint
            assert diagnostics == folder
    else:
        backbone = load_backbone(name)
        assert backbone.conditioning in ("class", "text")
        assert backbone.image_shape == (3, 32, 32)
