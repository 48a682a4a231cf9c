"""Every registered method samples on both kinds of backbone, and fits (where it needs to) and tests end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from lightning_fair.callbacks import FairnessEvaluator
from lightning_fair.data import CelebADataModule, GenerationRequests
from lightning_fair.methods import Prompts, method_registry

CLASS_PROMPTS = Prompts(classes=["a photo of a woman", "a photo of a man"], attribute="Male")
PACKAGE_METHODS = sorted(name for name, cls in method_registry().items() if cls.__module__.startswith("lightning_fair"))


def smoke_options(name: str, kind: str, classifier: Path) -> dict[str, Any]:
    """The fewest options that make method ``name`` sample on a ``kind`` (pixel/text) backbone."""
    guidance = {"classifier": str(classifier), "target_distributions": {"Male": [0.5, 0.5]}}
    options = {
        "plain": {},
        "conditional": {},
        "distribution_guidance": guidance,
        "h_sample_guidance": guidance,
        "attribute_switching": {"tau": 500, "search_steps": 2},
        "invdiff": {"delta_ratio": 0.5},
        "self_guidance": {"num_clusters": 3},
    }[name]
    if kind == "text" and name in ("conditional", "attribute_switching", "invdiff"):
        options = {**options, "prompts": CLASS_PROMPTS}
    return options


def test_every_package_method_is_covered() -> None:
    assert PACKAGE_METHODS == [
        "attribute_switching",
        "conditional",
        "distribution_guidance",
        "h_sample_guidance",
        "invdiff",
        "plain",
        "self_guidance",
    ], "a new method needs its smoke options in smoke_options()"


@pytest.mark.parametrize("kind", ["pixel", "text"])
@pytest.mark.parametrize("name", PACKAGE_METHODS)
def test_method_samples_on_both_backbones(
    name: str, kind: str, tiny_backbone: Path, tiny_sd: Path, tiny_classifier: Path
) -> None:
    backbone = tiny_backbone if kind == "pixel" else tiny_sd
    method = method_registry()[name](
        str(backbone),
        sampler={"num_inference_steps": 3, "cfg_scale": 2.0},
        **smoke_options(name, kind, tiny_classifier),
    )
    with torch.no_grad():
        images, state = method.sample(torch.tensor([0, 7, 3]))
        again, _ = method.sample(torch.tensor([7]))
    assert images.shape == (3, 3, 32, 32)
    assert torch.isfinite(images).all()
    # Decoded images, each its own and none a constant (decode clamps: a range check could not fail).
    flat = images.flatten(1)
    assert flat.std(dim=1).min() > 0.1
    assert (torch.cdist(flat, flat) + torch.eye(3) * 1e9).min() > 1.0
    assert len(state.indices) == 3
    if name != "distribution_guidance":  # the only batch-level method: its samples depend on the batch
        torch.testing.assert_close(again[0], images[1], atol=1e-4, rtol=0)


def fit_options(name: str, classifier: Path, folder: Path) -> dict[str, Any]:
    """Options of method ``name`` that make it fit quickly on the tiny models (its files in ``folder``)."""
    options = smoke_options(name, "pixel", classifier)
    extra = {
        "attribute_switching": {"tau": None},  # calibrated by the fit
        "invdiff": {"groups_file": str(folder / "groups.safetensors"), "num_groups": 2, "grouper_steps": 5},
        "self_guidance": {"clusters_file": str(folder / "clusters.safetensors"), "warmup_steps": 1},
    }
    return {**options, **extra.get(name, {})}


@pytest.mark.parametrize("name", PACKAGE_METHODS)
def test_method_fits_if_needed_then_tests(
    name: str, tiny_backbone: Path, tiny_classifier: Path, faces_root: Path, tmp_path: Path
) -> None:
    """What a new method gets the day it is registered: fit (where it needs one) and test, evaluated end to end."""
    method = method_registry()[name](
        str(tiny_backbone), sampler={"num_inference_steps": 2}, **fit_options(name, tiny_classifier, tmp_path)
    )
    images = CelebADataModule(
        root=str(faces_root), attributes=["Male", "Blond_Hair"], sensitive="Male", image_size=32, batch_size=8
    )
    data = GenerationRequests(num_samples=6, batch_size=4, calibration_samples=3, train_data=images)
    evaluator = FairnessEvaluator(str(tiny_classifier), sensitive="Male")
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,  # a fit without optimizer steps (a calibration) ends with its epoch
        max_steps=2,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=CSVLogger(tmp_path),
        callbacks=[evaluator],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    needs_fit = method.needs_fit
    if needs_fit:
        before = {key: value.clone() for key, value in method.state_dict().items() if key not in frozen_keys(method)}
        trainer.fit(method, data)
        after = method.state_dict()
        assert any(not torch.equal(before[key], after[key]) for key in before), (
            f"{name}: fit changed nothing"
        )  # tau too
    trainer.test(method, data, verbose=False)
    result = evaluator.result
    assert result.num_samples == 6
    assert sum(result.proportions["Male"]) == pytest.approx(1.0)
    declared = method.evaluation_targets().get("Male")
    assert result.target_distribution == (declared or [0.5, 0.5])


def frozen_keys(method: torch.nn.Module) -> set[str]:
    """The state keys of the method's frozen modules (a fit must leave them alone)."""
    return method._frozen_keys(method.state_dict())
