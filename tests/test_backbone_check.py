"""Budgets of steps and the check of a pretrained backbone: what a fit and its model say about themselves."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_fair.callbacks import BackboneCheck, FitBudgetCheck
from lightning_fair.checks import BackboneThresholds, check_backbone
from lightning_fair.checks.backbone import _failures
from lightning_fair.classifiers import load_classifier
from lightning_fair.data import CelebADataModule
from lightning_fair.methods import ConditionalSampling
from lightning_fair.pretraining import DiffusionPretraining


def faces(root: Path) -> CelebADataModule:
    return CelebADataModule(root=str(root), attributes=["Male", "Blond_Hair"], sensitive="Male", image_size=32)


def tiny_pretraining(folder: Path) -> DiffusionPretraining:
    torch.manual_seed(0)
    return DiffusionPretraining(
        output_dir=str(folder),
        block_out_channels=(8, 16),
        norm_num_groups=4,
        attributes=["Male", "Blond_Hair"],
        condition_attribute="Male",
    )


def test_verdict_rules_on_hand_numbers() -> None:
    rules = BackboneThresholds(min_agreement_gain=0.5, min_confident_share=0.5, max_fid_ratio=25.0)
    assert _failures(0.75, 0.5, 0.9, 0.9, 10.0, 1.0, rules) == []  # gain exactly 0.5, fid 10x
    (agreement,) = _failures(0.74, 0.5, 0.9, 0.9, 10.0, 1.0, rules)
    assert "agreement 0.740 against chance 0.50" in agreement
    assert "ignores" not in agreement
    (at_chance,) = _failures(0.52, 0.5, 0.9, 0.9, 10.0, 1.0, rules)
    assert "the model ignores its condition" in at_chance
    (unconfident,) = _failures(None, None, 0.44, 0.9, 10.0, 1.0, rules)
    assert "confident on 44% of the samples but 90%" in unconfident
    (far,) = _failures(None, None, 0.9, 0.9, 25.5, 1.0, rules)
    assert far == "fid_cls 25.50 is over 25x the data's own 1.00"
    assert _failures(None, None, 0.9, 0.9, 1e6, 1.0, BackboneThresholds(max_fid_ratio=None)) == []


def test_check_measures_agreement_on_the_samples_it_requests(
    tiny_backbone: Path, tiny_classifier: Path, faces_root: Path
) -> None:
    classifier = load_classifier(str(tiny_classifier))
    verdict = check_backbone(str(tiny_backbone), classifier, faces(faces_root), samples_per_class=6, steps=2)
    assert (verdict.attribute, verdict.samples, verdict.chance) == ("Male", 12, 0.5)
    method = ConditionalSampling(
        str(tiny_backbone), sampler={"num_inference_steps": 2, "condition_draw": "balanced"}
    ).eval()
    with torch.no_grad():
        images, state = method.sample(torch.arange(12))
        predicted = classifier.predict_proba(images)["Male"].argmax(dim=1)
    assert torch.equal(state.conditions["Male"].bincount(), torch.tensor([6, 6]))  # balanced requests
    assert verdict.agreement == pytest.approx(float((predicted == state.conditions["Male"]).float().mean()))
    assert verdict.fid_floor > 0
    assert verdict.fid_cls > 0
    assert verdict.usable == (not verdict.failures)
    assert json.loads(json.dumps(verdict.as_dict()))["usable"] == verdict.usable


def test_a_fit_stopped_by_max_time_says_so_in_the_log_and_the_model_card(faces_root: Path, tmp_path: Path) -> None:
    module = tiny_pretraining(tmp_path / "model")
    trainer = Trainer(
        max_steps=50,
        max_time={"milliseconds": 1},  # the safety cap ends the fit after its first step
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[FitBudgetCheck()],
    )
    with pytest.warns(UserWarning, match=r"FIT INCOMPLETE: stopped by max_time at step \d+ of 50") as warned:
        trainer.fit(module, faces(faces_root))
    training = json.loads((tmp_path / "model" / "training.json").read_text())
    assert training["steps"] == trainer.global_step < 50
    assert (training["max_steps"], training["complete"], training["stopped_by"]) == (50, False, "max_time")
    assert any(f"at step {trainer.global_step} of 50" in str(warning.message) for warning in warned)


def test_pretraining_ends_with_a_check_of_its_model(
    tiny_classifier: Path, faces_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two steps of training give noise: the check says the model is not usable, in the log and beside the model."""
    module = tiny_pretraining(tmp_path / "model")
    check = BackboneCheck(str(tiny_classifier), samples_per_class=8, steps=2)
    trainer = Trainer(
        max_steps=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[FitBudgetCheck(), check],
    )
    with caplog.at_level(logging.INFO), pytest.warns(UserWarning, match="NOT USABLE: conditional agreement"):
        trainer.fit(module, faces(faces_root))
    assert "Fit complete: step 2 of 2 (100%)" in caplog.text
    record = json.loads((tmp_path / "model" / "check.json").read_text())
    assert record["usable"] is False
    assert record["samples"] == 16
    assert record["classifier"] == str(tiny_classifier)
    assert any("agreement" in failure for failure in record["failures"])
