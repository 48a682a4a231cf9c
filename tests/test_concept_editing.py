"""Unified Concept Editing: the closed form, the edit as an adapter, its checkpoint, and that it moves the attribute."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_fair.data import GenerationRequests
from lightning_fair.methods import PlainSampling, UnifiedConceptEditing
from lightning_fair.methods.concept_editing import edit_factors
from lightning_fair.methods.conditions import Prompts

PROMPTS = Prompts(neutral=["a photo of a nurse", "a photo of a pilot"], attribute="Male")


def test_the_factors_are_the_closed_form_change() -> None:
    generator = torch.Generator().manual_seed(0)
    weight, keys, shifts, preserved = (
        torch.randn(shape, generator=generator) for shape in [(5, 6), (2, 6), (2, 6), (3, 6)]
    )
    up, down = edit_factors(weight, keys, shifts, preserved, lamb=0.5, edit_scale=1.0, preserve_scale=2.0)
    assert (up.shape, down.shape) == ((5, 2), (2, 6))
    targets = weight @ (keys + shifts).T
    numerator = 0.5 * weight + targets @ keys + 2.0 * weight @ preserved.T @ preserved
    denominator = 0.5 * torch.eye(6) + keys.T @ keys + 2.0 * preserved.T @ preserved
    torch.testing.assert_close(weight + up @ down, numerator @ torch.linalg.inv(denominator), atol=1e-5, rtol=1e-5)
    # with a vanishing ridge and nothing preserved, each key maps to its target exactly
    up, down = edit_factors(weight, keys, shifts, None, lamb=1e-8, edit_scale=1.0, preserve_scale=1.0)
    torch.testing.assert_close((weight + up @ down) @ keys.T, targets, atol=1e-4, rtol=1e-4)


def edited_method(tiny_sd: Path, tiny_classifier: Path, **options: object) -> UnifiedConceptEditing:
    return UnifiedConceptEditing(
        str(tiny_sd),
        str(tiny_classifier),
        sampler={"num_inference_steps": 2, "cfg_scale": 3.0},
        prompts=PROMPTS,
        **options,
    )


def test_the_adapter_is_the_weight_edit_and_the_checkpoint_holds_only_it(
    tiny_sd: Path, tiny_classifier: Path, tmp_path: Path
) -> None:
    method = edited_method(tiny_sd, tiny_classifier, iterations=1, images_per_concept=2)
    trainer = Trainer(max_epochs=1, limit_train_batches=1, logger=False, default_root_dir=tmp_path)
    trainer.fit(method, GenerationRequests(num_samples=2, batch_size=2, calibration_samples=1))
    assert not method.needs_fit
    assert method.alpha.abs().sum() > 0  # one round: target - observed, for each prompt
    layers = method.edited_layers()
    assert len(layers) == 2 * sum(name.endswith("attn2") for name, _ in method.backbone.unet.named_modules())
    with torch.no_grad():
        images, _ = method.sample(torch.tensor([0, 1]))
        for module in layers.values():  # the same edit written into the weights themselves
            delta = module.lora_B["default"].weight @ module.lora_A["default"].weight
            module.base_layer.weight += delta
            module.lora_B["default"].weight.zero_()
        direct, _ = method.sample(torch.tensor([0, 1]))
    torch.testing.assert_close(images, direct, atol=1e-4, rtol=0)

    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    keys = set(checkpoint["state_dict"])
    assert keys == {"alpha", "edited"} | {
        f"backbone.unet.{name}.lora_{part}.default.weight" for name in layers for part in "AB"
    }
    values = sum(value.numel() for value in checkpoint["state_dict"].values())
    frozen = sum(parameter.numel() for parameter in method.backbone.unet.parameters())
    assert values < frozen / 5


def test_the_rounds_move_the_attribute_toward_the_target() -> None:
    """On the shipped text-to-image model: an edit toward all men draws men far more often than plain."""
    prompts = Prompts(neutral="a photo of a person", attribute="Male")
    sampler = {"num_inference_steps": 8, "eta": 1.0}
    method = UnifiedConceptEditing(
        "synthetic_faces_sd",
        "synthetic_faces_classifier",
        sampler=sampler,
        prompts=prompts,
        attribute_concepts=["woman", "man"],
        target_distribution=[0.0, 1.0],
        iterations=3,
        images_per_concept=16,
    )
    Trainer(max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False).fit(
        method, GenerationRequests(num_samples=2, batch_size=2, calibration_samples=1)
    )
    plain = PlainSampling("synthetic_faces_sd", sampler=sampler, prompts=prompts)
    with torch.no_grad():
        shares = [
            method.classifier.predict(model.sample(torch.arange(32))[0])[:, 0].float().mean().item()
            for model in (plain, method)
        ]
    assert shares[1] > shares[0] + 0.3, shares


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"attribute_concepts": ["female", "male", "other"]},
            "Option 'attribute_concepts' must give one text per class",
        ),
        ({"lamb": 0.0}, "Options 'lamb' and 'edit_scale' must be positive"),
        ({"tolerance": 1.5}, "'tolerance' in \\(0, 1\\)"),
    ],
)
def test_bad_options_are_one_line(tiny_sd: Path, tiny_classifier: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        edited_method(tiny_sd, tiny_classifier, **options)
