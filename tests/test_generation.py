"""Generation requests, method checkpoints and the evaluation callbacks, end to end through the CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from lightning_fair.callbacks import FairnessEvaluator
from lightning_fair.classifiers import load_classifier
from lightning_fair.data.generated import from_pixels, write_record
from lightning_fair.data.requests import RequestBatches
from lightning_fair.diffusion import SamplerConfig
from lightning_fair.main import main
from lightning_fair.methods import ConditionalSampling, PlainSampling
from lightning_fair.metrics import FairnessSuite


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_requests_cover_every_sample_once(world_size: int) -> None:
    requests = RequestBatches(num_samples=10, global_batch_size=4, world_size=world_size)
    assert len(requests) % world_size == 0
    per_rank = [
        [requests[item]["index"] for item in range(rank, len(requests), world_size)] for rank in range(world_size)
    ]
    assert len({len(batches) for batches in per_rank}) == 1  # same number of batches on every process
    everything = torch.cat([index for batches in per_rank for index in batches]).sort().values
    assert everything.tolist() == list(range(10))
    # Global batch g is the same set of samples whatever the world size.
    for g, expected in enumerate([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]):
        assert torch.cat([per_rank[rank][g] for rank in range(world_size)]).tolist() == expected


def test_requests_read_back_finished_batches(tmp_path: Path) -> None:
    pixels = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    for index in range(6):
        write_record(tmp_path, index, pixels[index], {"Male": index % 2}, {})
    requests = RequestBatches(10, 4, 2, store=tmp_path, done=set(range(6)))
    items = [requests[item] for item in range(len(requests))]
    assert [item["index"].tolist() for item in items] == [[0, 1], [2, 3], [4, 5], [6, 7], [8], [9]]
    assert requests.num_read_back == 4  # global batch [4, 5, 6, 7] is generated whole, on both processes
    for item in items[:2]:
        assert set(item) == {"index", "images", "conditions"}
        assert torch.equal(item["images"], from_pixels(pixels[item["index"]]))
        assert item["conditions"]["Male"].tolist() == [index % 2 for index in item["index"].tolist()]
    for item in items[2:]:
        assert item.keys() == {"index", "as_stored"}


def test_checkpoint_has_no_backbone_weights(tiny_backbone: Path, tmp_path: Path) -> None:
    method = ConditionalSampling(str(tiny_backbone), sampler=SamplerConfig(num_inference_steps=2, cfg_scale=2.0))
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.strategy.connect(method)
    path = tmp_path / "method.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert not [key for key in checkpoint["state_dict"] if key.startswith("backbone.")]
    assert checkpoint["lightning_fair"] == {"method": "ConditionalSampling", "backbone": str(tiny_backbone)}
    backbone_bytes = sum(t.numel() * t.element_size() for t in method.backbone.state_dict().values())
    assert os.path.getsize(path) < backbone_bytes / 2
    restored = ConditionalSampling.load_from_checkpoint(path)
    assert restored.sampler.config.cfg_scale == 2.0
    for name, tensor in method.backbone.state_dict().items():
        torch.testing.assert_close(restored.backbone.state_dict()[name], tensor)
    with pytest.raises(ValueError, match="written by ConditionalSampling, not by PlainSampling"):
        PlainSampling.load_from_checkpoint(path, backbone=str(tiny_backbone))


def test_test_run_writes_metrics_grid_and_images(generation_config: Callable[..., Path], tmp_path: Path) -> None:
    config = generation_config(tmp_path, num_samples=10)
    main(["test", "-c", str(config)])
    log_dir = tmp_path / "logs" / "run" / "version_0"
    record = json.loads((log_dir / "metrics.json").read_text())
    metrics = record["metrics"]
    assert record["method"] == "ConditionalSampling"
    assert metrics["num_samples"] == 10
    assert metrics["proportion/Male=0"] + metrics["proportion/Male=1"] == pytest.approx(1.0)
    for name in ["fd", "fd_l1", "fd_kl", "dp_gap", "bias_score", "fid_cls", "kid_cls", "fd_given_Blond_Hair=0"]:
        assert name in metrics
    for name in ["agreement/Male", "agreement/Male=0", "agreement/Male=1"]:  # conditioned on Male
        assert name in metrics
    assert (log_dir / "metrics.md").read_text().startswith("# ConditionalSampling: fairness of 10 generated images")
    assert Image.open(log_dir / "samples_ConditionalSampling.png").size == (2 * 32 + 3, 2 * 32 + 3)
    images = sorted((tmp_path / "generated" / "images").glob("*.png"))
    assert [path.name for path in images] == [f"{i:06d}.png" for i in range(10)]
    with (tmp_path / "generated" / "generations.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["index"]) for row in rows] == list(range(10))
    assert set(rows[0]) == {"index", "condition_Male", "predicted_Male", "predicted_Blond_Hair"}
    assert list((tmp_path / "cache").glob("reference_features_*.pt"))

    # A rerun with skip_existing generates nothing and leaves the images untouched.
    before = {path.name: path.stat().st_mtime_ns for path in images}
    main(["test", "-c", str(config), f"--data.init_args.skip_existing={tmp_path / 'generated'}"])
    assert {path.name: path.stat().st_mtime_ns for path in images} == before


def run_cli(args: list[str], cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "lightning_fair", *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_processes_match_one(generation_config: Callable[..., Path], tmp_path: Path) -> None:
    """A 2-process gloo DDP run writes the same images and metrics as a 1-process run."""
    outputs = {}
    for devices in (1, 2):
        folder = tmp_path / f"devices{devices}"
        folder.mkdir()
        config = generation_config(folder, num_samples=11)
        strategy = ["--trainer.strategy=ddp"] if devices == 2 else []
        run_cli(["test", "-c", str(config), f"--trainer.devices={devices}", *strategy], cwd=folder)
        metrics = json.loads((folder / "logs" / "run" / "version_0" / "metrics.json").read_text())["metrics"]
        images = {
            path.name: np.asarray(Image.open(path)) for path in sorted((folder / "generated" / "images").glob("*.png"))
        }
        outputs[devices] = metrics, images
    (metrics_1, images_1), (metrics_2, images_2) = outputs[1], outputs[2]
    assert sorted(images_2) == sorted(images_1) == [f"{i:06d}.png" for i in range(11)]
    # Same samples up to float summation order: a handful of pixels may round to the neighbouring 8-bit level.
    differences = np.stack([images_1[name].astype(int) - images_2[name].astype(int) for name in images_1])
    assert np.abs(differences).max() <= 1
    assert np.count_nonzero(differences) <= differences.size // 1000
    assert metrics_2.keys() == metrics_1.keys()
    for name, value in metrics_1.items():  # KID included: its subsets are drawn in sample-index order
        assert metrics_2[name] == (None if value is None else pytest.approx(value, rel=1e-4, abs=1e-6)), name


def test_evaluator_compares_requested_conditions_with_predictions(tiny_classifier: Path) -> None:
    suite = FairnessSuite(load_classifier(str(tiny_classifier)), sensitive="Male")
    torch.manual_seed(0)
    images = torch.rand(12, 3, 32, 32) * 2 - 1
    predicted = suite.classifier.predict(images)[:, 0]
    requested = torch.tensor([0, 1] * 6)
    suite.update(images[:7], {"Male": requested[:7], "Male_start": torch.ones(7, dtype=torch.long)})
    suite.update(images[7:], {"Male": requested[7:]})
    result = suite.compute()
    results = result.metrics()
    assert result.conditions["Male"].agreement == results["agreement/Male"]
    match = predicted == requested
    assert results["agreement/Male"] == pytest.approx(match.float().mean().item())
    for value in (0, 1):
        assert results[f"agreement/Male={value}"] == pytest.approx(match[requested == value].float().mean().item())
    assert "agreement/Blond_Hair" not in results  # not requested
    assert not any("Male_start" in name for name in results)  # not an attribute of the classifier


def test_evaluator_reports_fd_of_extra_targets(tiny_classifier: Path) -> None:
    suite = FairnessSuite(
        load_classifier(str(tiny_classifier)), sensitive="Male", extra_targets={"Blond_Hair": [0.2, 0.8]}
    )
    torch.manual_seed(0)
    images = torch.rand(10, 3, 32, 32) * 2 - 1
    suite.update(images)
    result = suite.compute()
    results = result.metrics()
    assert result.fd_by_attribute == {"Blond_Hair": results["fd/Blond_Hair"]}
    blond = suite.classifier.predict(images)[:, 1].float().mean().item()
    assert results["fd/Blond_Hair"] == pytest.approx(((1 - blond - 0.2) ** 2 + (blond - 0.8) ** 2) ** 0.5)
    assert results["proportion/Blond_Hair=1"] == pytest.approx(blond)
    assert not any(name.startswith("agreement/") for name in results)  # no conditions were reported
    with pytest.raises(ValueError, match="'extra_targets.Blond_Hair' has 1 entries"):
        FairnessEvaluator(str(tiny_classifier), sensitive="Male", extra_targets={"Blond_Hair": [1.0]})
