"""Every registered method, from its config alone, fits (where it needs to) and tests on both kinds of backbone.

A new method adds its file and its ``configs/methods`` config; this test finds both through the registry and runs
them on a setup of the tiny models with generic short-run options (no list of methods or of their options here).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from config_files import CONFIGS_DIR, read

from lightning_fair.callbacks import FairnessEvaluator
from lightning_fair.cli import build_cli
from lightning_fair.methods import DebiasingMethod, method_registry

PACKAGE_METHODS = sorted(name for name, cls in method_registry().items() if cls.__module__.startswith("lightning_fair"))
SHORT_RUN = [  # what makes any method's config run in seconds on the tiny models
    "--trainer.max_epochs=1",  # a fit without optimizer steps (a calibration) ends with its epoch
    "--trainer.max_steps=2",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--model.init_args.sampler.num_inference_steps=2",
    "--data.init_args.num_samples=6",
    "--dataset.init_args.max_samples_per_split=48",  # the images a fit passes over (InvDiff's losses, SG's features)
]
TEXT_PROMPTS = {"classes": ["a photo of a woman", "a photo of a man"], "attribute": "Male"}


def method_config(name: str) -> Path:
    """The config of registered method ``name``: ``configs/methods/<name>.yaml``, which must build that class."""
    path = CONFIGS_DIR / "methods" / f"{name}.yaml"
    assert path.is_file(), f"registered method {name!r} has no config {path}"
    assert read(path)["model"]["class_path"] == method_registry()[name].__name__, f"{path} builds another class"
    return path


@pytest.mark.parametrize("kind", ["pixel", "text", "sdxl"])
@pytest.mark.parametrize("name", PACKAGE_METHODS)
def test_method_fits_if_needed_then_tests(
    name: str, kind: str, tiny_setup: Callable[..., Path], tiny_sd: Path, tiny_sdxl: Path, tmp_path: Path
) -> None:
    """What a new method gets the day it is registered: its config fitted (if it needs a fit) and tested."""
    if kind == "pixel" and "class" not in method_registry()[name].conditionings:
        pytest.skip(f"{name} works on text-to-image backbones only")
    backbones = {"text": tiny_sd, "sdxl": tiny_sdxl}
    setup = tiny_setup() if kind == "pixel" else tiny_setup(backbone=backbones[kind], prompts=TEXT_PROMPTS)
    cli = build_cli(["-c", str(setup), "-c", str(method_config(name)), *SHORT_RUN], run=False)
    method, trainer = cli.model, cli.trainer
    assert isinstance(method, DebiasingMethod)
    if method.needs_fit:
        frozen = method._frozen_keys(method.state_dict())
        before = {key: value.clone() for key, value in method.state_dict().items() if key not in frozen}
        trainer.fit(method, cli.datamodule)
        after = method.state_dict()
        assert any(not torch.equal(before[key], after[key]) for key in before), f"{name}: fit changed nothing"
        assert set(after) - frozen == set(before), f"{name}: fit changed which modules are trainable"
    trainer.test(method, cli.datamodule, verbose=False)
    (evaluator,) = [callback for callback in trainer.callbacks if isinstance(callback, FairnessEvaluator)]
    result = evaluator.result
    assert result.num_samples == 6
    assert sum(result.proportions["Male"]) == pytest.approx(1.0)
    assert result.target_distribution == (method.evaluation_targets().get("Male") or [0.5, 0.5])

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
    if not method.batch_level:  # sample i is the same in any batch
        torch.testing.assert_close(again[0], images[1], atol=1e-4, rtol=0)
