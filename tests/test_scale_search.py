"""The calibration of a guidance scale: the rule, the tolerance, and Distribution Guidance's fit that uses them."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_fair.data import GenerationRequests
from lightning_fair.methods import DistributionGuidance, HSpaceSampleGuidance
from lightning_fair.methods.lifecycle.calibration import (
    Measurement,
    bisect_scales,
    calibration_seed,
    choose_scale,
    fd_tolerance,
)


def test_tolerance_is_twice_an_exact_samplers_fd() -> None:
    assert fd_tolerance([torch.tensor([0.5, 0.5])], 256) == pytest.approx(2 * math.sqrt(0.5 / 256))
    # the attribute of largest spread sets it: 0.3 * 0.7 * 2 = 0.42 < 0.5
    assert fd_tolerance([torch.tensor([0.3, 0.7]), torch.tensor([0.5, 0.5])], 50) == pytest.approx(0.2)


def test_the_least_quality_cost_within_tolerance_is_chosen() -> None:
    scales, fid = [0.0, 1.0, 2.0, 5.0], [10.0, 11.0, 12.0, 11.5]
    assert choose_scale(scales, [0.5, 0.09, 0.02, 0.01], fid, 0.05) == (5.0, True)
    assert choose_scale(scales, [0.5, 0.04, 0.02, 0.01], fid, 0.05) == (1.0, True)
    assert choose_scale(scales, [0.5, 0.3, 0.2, 0.25], fid, 0.05) == (2.0, False)  # none reached: least FD


def linear_response(start: float, slope: float, calls: list[float]) -> Callable[[float], Measurement]:
    """A method whose share of class 1 falls linearly with the scale (clamped to [0, 1]); records the scales."""

    def measure(scale: float) -> Measurement:
        calls.append(scale)
        share = min(1.0, max(0.0, start - slope * scale))
        return Measurement({"Male": torch.tensor([1 - share, share])}, fid_cls=scale)

    return measure


TARGET = {"Male": torch.tensor([0.5, 0.5])}


def test_a_target_passed_between_two_grid_scales_is_bisected() -> None:
    calls: list[float] = []
    # share 0.8, 0.68, 0.2 at 0, 200, 1000: the best (200) and 1000 lie on either side of the target (500)
    measured = bisect_scales(linear_response(0.8, 0.0006, calls), [0.0, 200.0, 1000.0], TARGET, 0.1, 3)
    middle = math.sqrt(200.0 * 1000.0)
    assert calls == [0.0, 200.0, 1000.0, middle]  # one midpoint: share 0.532, FD 0.045 within 0.1
    assert measured[middle].fd(TARGET) == pytest.approx(math.sqrt(2) * (0.8 - 0.0006 * middle - 0.5))


def test_bisection_stops_after_its_steps_and_never_without_a_reversal() -> None:
    calls: list[float] = []
    bisect_scales(linear_response(0.8, 0.0006, calls), [0.0, 200.0, 1000.0], TARGET, 0.001, 2)
    assert calls[3:] == [pytest.approx(math.sqrt(200.0 * 1000.0)), pytest.approx(math.sqrt(447.2136 * 1000.0))]
    calls.clear()
    bisect_scales(linear_response(0.9, 0.0001, calls), [0.0, 200.0, 1000.0], TARGET, 0.001, 3)
    assert calls == [0.0, 200.0, 1000.0]  # the share never passes 0.5: nothing lies between
    calls.clear()
    bisect_scales(linear_response(0.8, 0.1, calls), [0.0, 1000.0], TARGET, 0.01, 1)
    assert calls == [0.0, 1000.0, 500.0]  # share 0.8 at 0, 0 at 1000: above a lower end of 0, the half


def fitted_guidance(
    method_class: type, backbone: Path, classifier: Path, data: GenerationRequests, folder: Path
) -> tuple[DistributionGuidance, Trainer]:
    method = method_class(
        str(backbone),
        str(classifier),
        target_distributions={"Male": [0.5, 0.5]},
        sampler={"num_inference_steps": 3, "eta": 1.0},
        guidance_scale=None,
        calibration_scales=[0.0, 300.0],
        calibration_samples=6,
    )
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=folder,
    )
    trainer.fit(method, data)
    return method, trainer


@pytest.mark.parametrize("method_class", [DistributionGuidance, HSpaceSampleGuidance])
def test_fit_calibrates_the_scale_and_the_checkpoint_keeps_it(
    method_class: type, tiny_backbone: Path, tiny_classifier: Path, faces_requests: GenerationRequests, tmp_path: Path
) -> None:
    method, trainer = fitted_guidance(method_class, tiny_backbone, tiny_classifier, faces_requests, tmp_path)
    search = method.scale_search
    with (tmp_path / "guidance_scale_curve.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["guidance_scale"]) for row in rows] == [0.0, 300.0]
    fd = [float(row["FD to target"]) for row in rows]
    assert fd == pytest.approx(search.fd, abs=1e-6)
    assert (tmp_path / "guidance_scale_curve.png").stat().st_size > 1000
    assert search.chosen == choose_scale(search.scales, search.fd, search.fid_cls, search.tolerance)[0]
    assert method.guidance_scales == {"Male": search.chosen}
    assert [path.name for path in method.fit_diagnostics()] == [
        "adp_accuracy.csv",
        "guidance_scale_curve.png",
        "guidance_scale_curve.csv",
        "guidance_scale_curve.json",
    ]
    choice = json.loads((tmp_path / "guidance_scale_curve.json").read_text())
    assert (choice["chosen"], choice["reached"]) == (search.chosen, search.reached)

    # FD at scale 0 is that of the unguided calibration samples, labelled by the classifier
    method.guidance_scales = {"Male": 0.0}
    with calibration_seed(method), torch.no_grad():
        images, _ = method.sample(6)
    share = torch.bincount(method.classifier.predict(images)[:, 0], minlength=2).float() / 6
    assert fd[0] == pytest.approx(float(torch.linalg.vector_norm(share - 0.5)), abs=1e-6)

    checkpoint = tmp_path / "calibrated.ckpt"
    trainer.save_checkpoint(checkpoint, weights_only=True)
    assert torch.load(checkpoint, weights_only=True)["lightning_fair"]["guidance_scale"] == search.chosen
    restored = method_class.load_from_checkpoint(checkpoint)
    assert restored.guidance_scales == {"Male": search.chosen}
    given = method_class.load_from_checkpoint(checkpoint, guidance_scale=7.0)
    assert given.guidance_scales == {"Male": 7.0}  # a number given later replaces the calibrated one


def test_sampling_without_a_calibrated_scale_names_the_remedy(tiny_backbone: Path, tiny_classifier: Path) -> None:
    method = DistributionGuidance(
        str(tiny_backbone),
        str(tiny_classifier),
        target_distributions={"Male": [0.5, 0.5]},
        sampler={"num_inference_steps": 3},
        guidance_scale=None,
    )
    with pytest.raises(ValueError, match="guidance_scale: null and no calibrated scale: run `fit`"):
        method.sample(2)


def test_without_real_images_the_quality_cost_is_the_drift_from_unguided_samples(
    tiny_sd: Path, tiny_classifier: Path, tmp_path: Path
) -> None:
    """No train_data: ADPs and calibration on generated images; calibration batches take the prompts in turn."""
    from lightning_fair.data.prompt_sets import batch_prompt
    from lightning_fair.methods.conditions import Prompts

    prompts = Prompts(neutral=["a photo of a nurse", "a photo of a pilot"])
    method = HSpaceSampleGuidance(
        str(tiny_sd),
        str(tiny_classifier),
        target_distributions={"Male": [0.5, 0.5]},
        sampler={"num_inference_steps": 2},
        prompts=prompts,
        guidance_scale=None,
        calibration_scales=[0.0, 300.0],
        calibration_samples=4,
    )
    requested = []
    sample = method.sample

    def recording_sample(indices: torch.Tensor) -> tuple:
        requested.append(batch_prompt(indices))
        return sample(indices)

    method.sample = recording_sample
    data = GenerationRequests(num_samples=2, batch_size=2, calibration_samples=1)
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(method, data)
    assert requested == [0, 1, 0, 1]  # two scales, two batches of 2, prompt by prompt
    search = method.scale_search
    assert search.reference == "samples of guidance_scale 0"
    assert search.fid_cls[0] == pytest.approx(0.0, abs=1e-3)  # the unguided samples against themselves
    choice = json.loads((tmp_path / "guidance_scale_curve.json").read_text())
    assert choice["fid_cls_reference"] == "samples of guidance_scale 0"
