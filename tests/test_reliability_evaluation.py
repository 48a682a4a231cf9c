"""Evaluation metrics stay exact under uneven multi-process runs, stale caches and undefined values."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from lightning_fair.callbacks import FairnessEvaluator
from lightning_fair.callbacks.fairness_evaluator import write_metrics
from lightning_fair.classifiers import load_classifier
from lightning_fair.data import CelebADataModule
from lightning_fair.main import main
from lightning_fair.metrics import FairnessSuite, FeatureDistance
from lightning_fair.metrics.quality import reference_cache_key

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 300  # a hang must fail the test, not block the suite


def run_test_command(
    config: Path, devices: int, num_samples: int, batch_size: int, kid_subset_size: int
) -> dict[str, float | None]:
    """Runs ``test`` of a ``generation_config`` in this process or in 2 CPU DDP processes; returns its metrics."""
    config.write_text(config.read_text().replace("kid_subset_size: 4", f"kid_subset_size: {kid_subset_size}"))
    arguments = [
        "test",
        "-c",
        str(config),
        f"--trainer.devices={devices}",
        f"--data.init_args.num_samples={num_samples}",
        f"--data.init_args.batch_size={batch_size}",
        "--model.init_args.sampler.num_inference_steps=1",
    ]
    if devices == 1:
        main(arguments)
    else:
        environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
        result = subprocess.run(
            [sys.executable, "-m", "lightning_fair", *arguments, "--trainer.strategy=ddp"],
            cwd=config.parent,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            env=environment,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((config.parent / "logs" / "run" / "version_0" / "metrics.json").read_text())["metrics"]


def assert_two_processes_match_one(
    generation_config: Callable[..., Path], folder: Path, num_samples: int, batch_size: int, kid_subset_size: int
) -> dict[str, float | None]:
    metrics = {}
    for devices in (1, 2):
        (folder / f"devices{devices}").mkdir()
        config = generation_config(folder / f"devices{devices}", num_samples=num_samples)
        metrics[devices] = run_test_command(config, devices, num_samples, batch_size, kid_subset_size)
    assert metrics[1]["num_samples"] == metrics[2]["num_samples"] == num_samples
    assert metrics[2].keys() == metrics[1].keys()
    for name, value in metrics[1].items():
        assert metrics[2][name] == (None if value is None else pytest.approx(value, rel=1e-4, abs=1e-6)), name
    return metrics[1]


@pytest.mark.slow  # fast: test_generation's 2-process run (11 samples, uneven), test_metrics_ddp, the KID cap below
@pytest.mark.parametrize("kid_subset_size", [4, 256])
@pytest.mark.parametrize("num_samples", [13, 14])
def test_uneven_two_process_test_matches_one_process(
    generation_config: Callable[..., Path], tmp_path: Path, num_samples: int, kid_subset_size: int
) -> None:
    """13 or 14 samples in global batches of 4: the last one leaves a process with fewer samples."""
    metrics = assert_two_processes_match_one(generation_config, tmp_path, num_samples, 4, kid_subset_size)
    assert metrics["kid_cls"] is not None  # KID is measured (its subsets are capped at the 13-14 samples)


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [4, 128])
def test_300_samples_two_processes_match_one(
    generation_config: Callable[..., Path], tmp_path: Path, batch_size: int
) -> None:
    """Above the default KID subset size of 256 and with a last global batch of 300 % batch_size samples."""
    metrics = assert_two_processes_match_one(generation_config, tmp_path, 300, batch_size, 256)
    assert metrics["kid_cls"] is not None


def test_feature_distance_equals_torchmetrics_whatever_the_order() -> None:
    generator = torch.Generator().manual_seed(1)
    reference = torch.randn(50, 16, generator=generator)
    generated = torch.randn(30, 16, generator=generator) * 1.3 + 0.2
    fid = FrechetInceptionDistance(feature=IdentityFeatures(16))
    kid = KernelInceptionDistance(feature=IdentityFeatures(16), subset_size=20)
    for metric in (fid, kid):
        metric.update(reference, real=True)
        metric.update(generated, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        kid_mean, kid_std = kid.compute()
    distance = FeatureDistance(reference, kid_subset_size=20)
    order = torch.randperm(30, generator=generator)  # the samples arrive shuffled, in uneven batches
    for chunk in (order[:3], order[3:4], order[4:]):
        distance.update(generated[chunk], chunk)
    result = distance.compute()
    assert result["fid"].item() == pytest.approx(fid.compute().item(), rel=1e-6)
    assert result["kid"].item() == pytest.approx(kid_mean.item(), rel=1e-6)
    assert result["kid_std"].item() == pytest.approx(kid_std.item(), rel=1e-6)


def test_feature_distance_caps_kid_subsets_and_is_undefined_below_two_samples() -> None:
    generator = torch.Generator().manual_seed(2)
    reference, generated = torch.randn(6, 4, generator=generator), torch.randn(3, 4, generator=generator)
    distance = FeatureDistance(reference, kid_subset_size=256)
    distance.update(generated, torch.arange(3))
    kid = KernelInceptionDistance(feature=IdentityFeatures(4), subset_size=3)  # capped at the 3 samples
    kid.update(reference, real=True)
    kid.update(generated, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        expected = kid.compute()[0].item()
    assert distance.compute()["kid"].item() == pytest.approx(expected, rel=1e-6)
    single = FeatureDistance(reference)
    single.update(generated[:1], torch.tensor([5]))
    assert all(math.isnan(value.item()) for value in single.compute().values())
    repeated = FeatureDistance(reference)
    repeated.update(generated[:2], torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="added twice"):
        repeated.compute()


class IdentityFeatures(nn.Module):
    """The ``feature`` module of torchmetrics' FID/KID for inputs that are features already."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def evaluator_with_reference(classifier: Path, faces_root: Path, cache_dir: Path, **options: Any) -> FairnessEvaluator:
    """A started ``FairnessEvaluator`` with the faces' test split as reference (``options`` for the DataModule)."""
    reference = CelebADataModule(
        root=str(faces_root), attributes=["Male", "Blond_Hair"], sensitive="Male", **{"image_size": 32, **options}
    )
    evaluator = FairnessEvaluator(
        str(classifier), sensitive="Male", target="Blond_Hair", reference=reference, cache_dir=str(cache_dir)
    )
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    evaluator.on_test_start(trainer, LightningModule())
    return evaluator


def random_images(count: int, seed: int = 0) -> Tensor:
    return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def fid_cls(evaluator: FairnessEvaluator) -> float:
    evaluator.suite.update(random_images(12))
    return evaluator.suite.compute().quality.fid


@pytest.mark.parametrize("options", [{"max_samples_per_split": 10}, {"image_size": 16}])
def test_reference_cache_is_keyed_on_the_images_and_transform(
    tiny_classifier: Path, faces_root: Path, tmp_path: Path, options: dict[str, int]
) -> None:
    shared = tmp_path / "shared"
    full = fid_cls(evaluator_with_reference(tiny_classifier, faces_root, shared))
    cached = fid_cls(evaluator_with_reference(tiny_classifier, faces_root, shared, **options))
    fresh = fid_cls(evaluator_with_reference(tiny_classifier, faces_root, tmp_path / "fresh", **options))
    assert cached == pytest.approx(fresh, rel=1e-9)
    assert cached != pytest.approx(full, rel=1e-3)
    assert len(list(shared.glob("reference_features_*.pt"))) == 2


def test_reference_cache_key_follows_the_centre_crop(tiny_classifier: Path, faces_root: Path) -> None:
    """A cropped reference (which a classifier of uncropped images refuses to read) has a key of its own."""
    classifier = load_classifier(str(tiny_classifier))

    def key(**options: Any) -> str:
        data = CelebADataModule(root=str(faces_root), attributes=["Male"], sensitive="Male", image_size=32, **options)
        return reference_cache_key(classifier, data.dataset("test"))

    assert len({key(), key(center_crop=24), key(center_crop=28)}) == 3


def test_reference_cache_of_an_older_key_is_not_read(tiny_classifier: Path, faces_root: Path, tmp_path: Path) -> None:
    fresh = fid_cls(evaluator_with_reference(tiny_classifier, faces_root, tmp_path / "fresh"))
    # The key of earlier versions: root, split and image size, then the classifier's weights.
    digest = hashlib.sha256(f"{faces_root.resolve()}:test:32".encode())
    for tensor in load_classifier(str(tiny_classifier)).state_dict().values():
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    stale = tmp_path / "stale"
    stale.mkdir()
    features = torch.zeros(40, load_classifier(str(tiny_classifier)).feature_dim)
    torch.save(features, stale / f"reference_features_{digest.hexdigest()[:16]}.pt")
    assert fid_cls(evaluator_with_reference(tiny_classifier, faces_root, stale)) == pytest.approx(fresh, rel=1e-9)


def suite_predicting(classifier: Path, **options: Any) -> FairnessSuite:
    """A ``FairnessSuite`` whose classifier reads the classes off the images made by ``images_of``."""
    labeller = load_classifier(str(classifier))

    def predict_proba(images: Tensor) -> dict[str, Tensor]:
        classes = images[:, :2, 0, 0].long()
        return {"Male": F.one_hot(classes[:, 0], 2).float(), "Blond_Hair": F.one_hot(classes[:, 1], 2).float()}

    labeller.predict_proba = predict_proba
    return FairnessSuite(labeller, sensitive="Male", target="Blond_Hair", **options)


def images_of(male: list[int], blond: list[int]) -> Tensor:
    """Images predicted (by ``evaluator_predicting``) as the given Male and Blond_Hair classes."""
    images = torch.zeros(len(male), 3, 32, 32)
    images[:, 0, 0, 0] = torch.tensor(male, dtype=torch.float)
    images[:, 1, 0, 0] = torch.tensor(blond, dtype=torch.float)
    return images


def strict_json(path: Path) -> dict[str, Any]:
    def refuse(constant: str) -> None:
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_dp_gap_of_hand_computed_predictions(tiny_classifier: Path) -> None:
    suite = suite_predicting(tiny_classifier)
    suite.update(images_of([0, 0, 1, 1], [1, 0, 1, 1]))
    # P(Blond_Hair=1 | Male=0) = 1/2, P(Blond_Hair=1 | Male=1) = 2/2 -> gap 1/2
    assert suite.compute().dp_gap == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("blond", "reason"),
    [([0, 0, 0, 0], "no sample was predicted Blond_Hair=1"), ([1, 1, 1, 1], "every sample was predicted Blond_Hair=1")],
)
def test_dp_gap_without_variation_of_the_target_is_null(
    tiny_classifier: Path, tmp_path: Path, blond: list[int], reason: str
) -> None:
    suite = suite_predicting(tiny_classifier)
    suite.update(images_of([0, 1, 0, 1], blond))
    with pytest.warns(UserWarning, match=rf"dp_gap (is|are) undefined: {reason}"):
        result = suite.compute()
    results = result.metrics()
    assert results["dp_gap"] is None  # was 0.0: the rates of Blond_Hair=1 were equal because all were 0 (or 1)
    assert results[f"fd_given_Blond_Hair={1 - blond[0]}"] is None  # no sample in that class
    assert results[f"fd_given_Blond_Hair={blond[0]}"] == results["fd"] == 0.0  # Male 2 of 4
    write_metrics(result, tmp_path, "Test", "classifier")
    metrics = strict_json(tmp_path / "metrics.json")["metrics"]
    assert metrics["dp_gap"] is None
    assert metrics["num_samples"] == 4
    assert "| dp_gap | null |" in (tmp_path / "metrics.md").read_text().splitlines()


def test_dp_gap_with_one_sensitive_class_is_null(tiny_classifier: Path, tmp_path: Path) -> None:
    suite = suite_predicting(tiny_classifier)
    suite.update(images_of([1, 1, 1], [0, 1, 1]))
    with pytest.warns(UserWarning, match=r"dp_gap is undefined: every sample was predicted Male=1"):
        result = suite.compute()
    results = result.metrics()
    assert results["dp_gap"] is None  # was NaN, written into metrics.json as NaN
    assert results["fd"] == pytest.approx(math.sqrt(0.5))  # p_hat [0, 1] against [1/2, 1/2]
    write_metrics(result, tmp_path, "Test", "classifier")
    assert strict_json(tmp_path / "metrics.json")["metrics"]["dp_gap"] is None


def test_infinite_kl_is_null(tiny_classifier: Path, tmp_path: Path) -> None:
    suite = suite_predicting(tiny_classifier, target_distribution=[1.0, 0.0])
    suite.update(images_of([0, 1], [0, 1]))
    with pytest.warns(UserWarning, match=r"fd_kl is infinite: a Male class of target probability 0 was predicted"):
        result = suite.compute()
    results = result.metrics()
    assert results["fd_kl"] is None
    assert results["fd_l1"] == pytest.approx(1.0)  # |1/2 - 1| + |1/2 - 0|
    write_metrics(result, tmp_path, "Test", "classifier")  # no Infinity in the file
    assert strict_json(tmp_path / "metrics.json")["metrics"]["fd_kl"] is None


def test_metrics_of_no_sample_are_null(tiny_classifier: Path, tmp_path: Path) -> None:
    suite = suite_predicting(tiny_classifier)
    suite.update(images_of([], []))
    with pytest.warns(
        UserWarning, match=r"^fd, fd_l1, fd_kl, bias_score, .*, dp_gap are undefined: no sample was generated"
    ):
        result = suite.compute()
    results = result.metrics()
    assert results["num_samples"] == 0
    assert {name for name, value in results.items() if value is not None} == {"num_samples"}
    write_metrics(result, tmp_path, "Test", "classifier")
    assert strict_json(tmp_path / "metrics.json")["metrics"]["proportion/Male=0"] is None


def test_quality_of_one_sample_is_null(tiny_classifier: Path, faces_root: Path, tmp_path: Path) -> None:
    suite = evaluator_with_reference(tiny_classifier, faces_root, tmp_path).suite
    suite.update(random_images(1))
    with pytest.warns(
        UserWarning, match=r"^fid_cls, kid_cls, kid_cls_std are undefined: it needs at least 2 generated samples, got 1"
    ):
        result = suite.compute()
    results = result.metrics()
    assert results["fid_cls"] is results["kid_cls"] is results["kid_cls_std"] is None
    assert results["fd"] is not None


def test_agreement_of_a_class_never_requested_is_null(tiny_classifier: Path) -> None:
    suite = suite_predicting(tiny_classifier)
    suite.update(images_of([1, 0, 1, 1], [0, 0, 1, 1]), {"Male": torch.ones(4, dtype=torch.long)})
    with pytest.warns(
        UserWarning, match=r"agreement/Male=0, bias_score/Male=0 are undefined: no sample was requested Male=0"
    ):
        result = suite.compute()
    results = result.metrics()
    assert results["agreement/Male=0"] is None
    assert results["agreement/Male=1"] == results["agreement/Male"] == 0.75
    assert results["bias_score/Male=0"] is None
    assert results["bias_score/Male=1"] == results["bias_score_by/Male"] == 0.5  # 3 of 4 predicted Male: |0.75 - 0.25|
