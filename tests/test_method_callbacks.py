"""A method supplies the checkpoint callback of its fit: ``last.ckpt`` in the run's ``checkpoints/`` folder."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_fair.data import GenerationRequests
from lightning_fair.methods import DistributionGuidance, PlainSampling


def test_a_fit_writes_last_checkpoint(
    tiny_backbone: Path, tiny_classifier: Path, faces_requests: GenerationRequests, tmp_path: Path
) -> None:
    method = DistributionGuidance(
        str(tiny_backbone),
        str(tiny_classifier),
        target_distributions={"Male": [0.5, 0.5]},
        sampler={"num_inference_steps": 4},
    )
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(method, faces_requests)
    (callback,) = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert callback._every_n_train_steps == 0
    assert callback._save_on_train_epoch_end
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["lightning_fair"]["method"] == "DistributionGuidance"
    assert checkpoint["global_step"] == 2
    assert not any(key.startswith(("backbone.", "classifier.")) for key in checkpoint["state_dict"])


def test_checkpoint_folder_comes_from_the_method(tiny_backbone: Path, tiny_classifier: Path, tmp_path: Path) -> None:
    method = DistributionGuidance(str(tiny_backbone), str(tiny_classifier), target_distributions={"Male": [0.5, 0.5]})
    method.checkpoint_dir = tmp_path / "fit"
    method.trainer = Trainer(logger=False, default_root_dir=tmp_path)
    (callback,) = method.configure_callbacks()
    assert Path(callback.dirpath) == tmp_path / "fit"
    assert callback.filename == "last"
    assert callback._every_n_epochs == 1
    assert callback._save_on_train_epoch_end


def test_a_method_without_fit_has_no_checkpoint_callback(tiny_backbone: Path, tmp_path: Path) -> None:
    method = PlainSampling(str(tiny_backbone))
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.test(method, GenerationRequests(num_samples=2, batch_size=2))
    assert method.configure_callbacks() == []
    assert not any(isinstance(callback, ModelCheckpoint) for callback in trainer.callbacks)
    assert not (tmp_path / "checkpoints").exists()


def test_checkpointing_off_writes_no_checkpoint(
    tiny_backbone: Path, tiny_classifier: Path, faces_requests: GenerationRequests, tmp_path: Path
) -> None:
    method = DistributionGuidance(
        str(tiny_backbone),
        str(tiny_classifier),
        target_distributions={"Male": [0.5, 0.5]},
        sampler={"num_inference_steps": 4},
    )
    trainer = Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(method, faces_requests)
    assert not any(isinstance(callback, ModelCheckpoint) for callback in trainer.callbacks)
    assert not (tmp_path / "checkpoints").exists()
