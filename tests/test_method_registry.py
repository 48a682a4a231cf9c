"""Every registered method runs on both kinds of backbone: a pixel UNet and a latent text-to-image pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

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
    assert images.abs().max() <= 1
    assert len(state.indices) == 3
    if name != "distribution_guidance":  # the only batch-level method: its samples depend on the batch
        torch.testing.assert_close(again[0], images[1], atol=1e-4, rtol=0)
