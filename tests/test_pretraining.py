"""DiffusionPretraining: trains, keeps EMA weights, exports a diffusers folder, resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel
from diffusers.training_utils import EMAModel
from lightning.pytorch import Trainer

from lightning_fair.data import CelebADataModule
from lightning_fair.diffusion.seeding import training_generators
from lightning_fair.pretraining import DiffusionPretraining
from lightning_fair.pretraining.ema import ema_decay


def tiny(output_dir: Path, **options: object) -> DiffusionPretraining:
    settings = {
        "image_size": 32,
        "block_out_channels": (8, 16),
        "norm_num_groups": 4,
        "attributes": ["Male", "Blond_Hair"],
        "condition_attribute": "Male",
        "warmup_steps": 1,
        "ema_decay": 0.5,
    }
    return DiffusionPretraining(output_dir=str(output_dir), **{**settings, **options})  # type: ignore[arg-type]


def datamodule(root: Path) -> CelebADataModule:
    return CelebADataModule(
        root=str(root), attributes=["Male", "Blond_Hair"], sensitive="Male", image_size=32, batch_size=16
    )


def trainer(tmp_path: Path, steps: int) -> Trainer:
    return Trainer(
        max_steps=steps,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def test_fit_exports_the_conditional_model_with_its_training_record(faces_root: Path, tmp_path: Path) -> None:
    module = tiny(tmp_path / "model")
    before = [p.detach().clone() for p in module.unet.parameters()]
    trainer(tmp_path, steps=3).fit(module, datamodule(faces_root))
    assert any(not torch.equal(a, b) for a, b in zip(before, module.unet.parameters(), strict=True))
    # The EMA differs from the raw weights after several steps.
    assert any(
        not torch.equal(a, b) for a, b in zip(module.ema.module.parameters(), module.unet.parameters(), strict=True)
    )
    record = json.loads((tmp_path / "model" / "lightning_fair.json").read_text())
    conditioning = {"attribute": "Male", "num_classes": 2, "null_label": 2}
    assert record == {"conditioning": conditioning, "image_size": 32, "center_crop_fraction": 1.0}
    training = json.loads((tmp_path / "model" / "training.json").read_text())
    losses = training["val_loss"]
    assert training["weights"] == min(losses, key=losses.get)  # the weights of lower validation loss
    assert (training["steps"], training["max_steps"], training["complete"]) == (3, 3, True)
    kept = module.ema.module if training["weights"] == "ema" else module.unet
    loaded = UNet2DModel.from_pretrained(tmp_path / "model" / "unet")
    assert loaded.config.num_class_embeds == 3
    x, t, labels = torch.randn(2, 3, 32, 32), torch.tensor([10, 500]), torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, class_labels=labels).sample, kept(x, t, labels).sample)
    pipeline = DDPMPipeline.from_pretrained(tmp_path / "model")
    assert pipeline.scheduler.config.num_train_timesteps == 1000
    assert not list(tmp_path.glob(".model.*"))  # no staging folder left


def test_export_keeps_the_weights_of_lower_validation_loss(faces_root: Path, tmp_path: Path) -> None:
    module = tiny(tmp_path / "model")
    trainer(tmp_path, steps=2).fit(module, datamodule(faces_root))
    for spoiled, kept in (("ema", "raw"), ("raw", "ema")):
        model = module.ema.module if spoiled == "ema" else module.unet
        saved = {name: value.clone() for name, value in model.state_dict().items()}
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        module.on_train_end()
        training = json.loads((tmp_path / "model" / "training.json").read_text())
        assert training["weights"] == kept
        assert training["val_loss"][spoiled] > training["val_loss"][kept]
        model.load_state_dict(saved)


def test_null_label_dropout(tmp_path: Path) -> None:
    module = tiny(tmp_path / "model")
    batch = {"attributes": torch.tensor([[1, 0]] * 1000)}
    labels = module._class_labels(batch, 0.1, training_generators(0, 0, torch.arange(1000)))
    assert set(labels.tolist()) == {1, 2}
    assert abs((labels == 2).float().mean().item() - 0.1) < 0.03
    no_dropout = module._class_labels(batch, 0.0, training_generators(0, 0, torch.arange(1000)))
    assert torch.equal(no_dropout, torch.ones(1000, dtype=torch.long))


def test_ema_decay_warms_up_as_diffusers_ema_model(tmp_path: Path) -> None:
    """Update n + 1 of the average (n updates done) uses diffusers' decay of optimization step n + 1."""
    reference = EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=0.999, use_ema_warmup=True, power=0.75)
    for updates_done in [1, 2, 10, 100, 1_000, 9_999, 50_000]:
        expected = reference.get_decay(updates_done + 1)
        assert ema_decay(updates_done, max_decay=0.999, inv_gamma=1.0, power=0.75) == pytest.approx(expected, abs=1e-12)
    assert ema_decay(50_000, max_decay=0.999, inv_gamma=1.0, power=0.75) == 0.999


def test_ema_forgets_the_first_weights_within_a_short_run(tmp_path: Path) -> None:
    """After 800 steps the EMA holds almost none of the weights of step 1 (decay 0.999 without warm-up: 45%)."""
    module = tiny(tmp_path / "model", ema_decay=0.999)
    first = {name: value.clone() for name, value in module.unet.state_dict().items()}
    module.ema.update_parameters(module.unet)  # the first update copies the weights
    with torch.no_grad():
        for parameter in module.unet.parameters():
            parameter.add_(1.0)
    for _ in range(799):
        module.ema.update_parameters(module.unet)
    share = 1.0
    for updates_done in range(1, 800):
        share *= ema_decay(updates_done, max_decay=0.999, inv_gamma=1.0, power=0.75)
    assert share < 1e-6  # 0.999 ** 799 = 0.45 without warm-up
    for name, value in module.ema.module.named_parameters():
        torch.testing.assert_close(value, first[name] + 1, rtol=1e-5, atol=1e-5)  # the raw weights (float32 rounding)


def test_validation_logs_the_loss_of_ema_and_raw_weights(faces_root: Path, tmp_path: Path) -> None:
    """Both losses use the same draws: equal while the EMA equals the raw weights, apart after training."""
    module = tiny(tmp_path / "model")
    [before] = trainer(tmp_path, steps=1).validate(module, datamodule(faces_root), verbose=False)
    assert before["val/loss"] == before["val/loss_raw"]
    trainer(tmp_path, steps=3).fit(module, datamodule(faces_root))
    [after] = trainer(tmp_path, steps=1).validate(module, datamodule(faces_root), verbose=False)
    assert after["val/loss"] != after["val/loss_raw"]


def test_unconditional(faces_root: Path, tmp_path: Path) -> None:
    module = tiny(tmp_path / "model", condition_attribute=None)
    assert module.unet.config.num_class_embeds is None
    trainer(tmp_path, steps=1).fit(module, datamodule(faces_root))
    assert json.loads((tmp_path / "model" / "lightning_fair.json").read_text())["conditioning"] is None


def test_resume_from_checkpoint(faces_root: Path, tmp_path: Path) -> None:
    first = trainer(tmp_path, steps=2)
    first.fit(tiny(tmp_path / "model"), datamodule(faces_root))
    checkpoint = tmp_path / "resume.ckpt"
    first.save_checkpoint(checkpoint)
    resumed = tiny(tmp_path / "model")
    second = trainer(tmp_path, steps=4)
    second.fit(resumed, datamodule(faces_root), ckpt_path=checkpoint)
    assert second.global_step == 4
    assert resumed.ema.n_averaged.item() == 4


def test_a_fit_resumed_at_its_budget_still_exports(faces_root: Path, tmp_path: Path) -> None:
    """A run killed after its last checkpoint: resumed with the same budget, it trains nothing and exports."""
    first = trainer(tmp_path, steps=2)
    first.fit(tiny(tmp_path / "first"), datamodule(faces_root))
    checkpoint = tmp_path / "last.ckpt"
    first.save_checkpoint(checkpoint)
    trainer(tmp_path, steps=2).fit(tiny(tmp_path / "model"), datamodule(faces_root), ckpt_path=checkpoint)
    training = json.loads((tmp_path / "model" / "training.json").read_text())
    assert (training["steps"], training["complete"]) == (2, True)
    first_unet = UNet2DModel.from_pretrained(tmp_path / "first" / "unet")
    resumed_unet = UNet2DModel.from_pretrained(tmp_path / "model" / "unet")
    for a, b in zip(first_unet.parameters(), resumed_unet.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_init_weights_fine_tunes_an_exported_model(tmp_path: Path) -> None:
    tiny(tmp_path / "first").export(tmp_path / "first")
    exported = UNet2DModel.from_pretrained(tmp_path / "first" / "unet")
    module = tiny(tmp_path / "second", init_weights=str(tmp_path / "first"))
    for name, value in exported.state_dict().items():
        torch.testing.assert_close(module.unet.state_dict()[name], value)
        torch.testing.assert_close(module.ema.module.state_dict()[name], value)  # the average starts there too
    mismatch = r"'init_weights'\) does not match the configured architecture: block_out_channels"
    with pytest.raises(ValueError, match=mismatch):
        tiny(tmp_path / "third", init_weights=str(tmp_path / "first"), block_out_channels=(8, 8))
    with pytest.raises(FileNotFoundError, match="diffusion model for 'init_weights'"):
        tiny(tmp_path / "third", init_weights=str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"condition_attribute": "Smiling"}, "'condition_attribute' .* must be one of 'attributes'"),
        ({"attention_levels": (True,)}, "'attention_levels' has 1 entries for 2 levels"),
        ({"norm_num_groups": 3}, "'norm_num_groups' \\(3\\) must divide"),
        ({"condition_dropout": 1.0}, "'condition_dropout' must lie in"),
    ],
)
def test_invalid_options(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(tmp_path, **options)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("learning_rate", 0.0, "Option 'learning_rate' must be positive, got 0.0"),
        ("weight_decay", -0.1, "Option 'weight_decay' must be non-negative, got -0.1"),
        ("warmup_steps", -1, "Option 'warmup_steps' must be non-negative, got -1"),
    ],
)
def test_out_of_range_numbers_are_refused(option: str, value: float, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        DiffusionPretraining(output_dir=str(tmp_path / "model"), **{option: value})


def test_training_images_of_another_size_are_refused(faces_root: Path, tmp_path: Path) -> None:
    module = DiffusionPretraining(
        output_dir=str(tmp_path / "model"), image_size=16, block_out_channels=(8, 16), norm_num_groups=4
    )
    data = CelebADataModule(str(faces_root), attributes=["Male"], sensitive="Male", image_size=32, batch_size=8)
    trainer = Trainer(
        max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path
    )
    with pytest.raises(ValueError, match="Option 'image_size' of DiffusionPretraining is 16 but the training images"):
        trainer.fit(module, data)
    assert not (tmp_path / "model").exists()
