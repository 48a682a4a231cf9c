"""Attribute Switching: independent start/final conditions, the switch at tau, the tau search, DDP, checkpoints."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_fair.data import GenerationRequests
from lightning_fair.diffusion import Step
from lightning_fair.diffusion.seeding import NOISE_STREAM, per_sample_randn, sample_generators
from lightning_fair.methods import AttributeSwitching
from lightning_fair.pretraining import DiffusionPretraining


def switching(backbone: Path, **options: object) -> AttributeSwitching:
    settings = {"sampler": {"num_inference_steps": 4}, "search_steps": 3}
    return AttributeSwitching(str(backbone), **{**settings, **options})


def test_start_and_final_classes_are_independent_draws(tiny_backbone: Path) -> None:
    method = switching(tiny_backbone, tau=500)
    state = method.init_state(torch.arange(2000))
    start, final = state.conditions["Male_start"], state.conditions["Male"]
    assert torch.equal(state.condition, start)
    assert torch.equal(state.final_condition, final)
    for labels in (start, final):
        assert abs(labels.float().mean().item() - 0.5) < 0.05
    # Independent: every (start, final) pair about a quarter of the samples.
    pairs = torch.bincount(2 * start + final, minlength=4).float() / 2000
    assert torch.all((pairs - 0.25).abs() < 0.04), pairs
    # Sample i's classes depend only on (seed, i).
    assert torch.equal(method.init_state(torch.arange(5, 10)).conditions["Male"], final[5:10])


def test_condition_switches_below_tau(tiny_backbone: Path) -> None:
    method = switching(tiny_backbone, tau=500)
    state = method.init_state(torch.arange(4))
    start, final = state.condition, state.final_condition
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for t, expected in ((501, start), (500, final), (20, final)):
            step = Step(index=0, timestep=torch.tensor(t), num_steps=4)
            torch.testing.assert_close(method.guided_eps(x, step, state), method.backbone(x, t, expected))


def test_options_are_checked(tiny_backbone: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'tau' must lie in 0..999"):
        switching(tiny_backbone, tau=1000)
    with pytest.raises(ValueError, match="'final_distribution' has 3 entries"):
        switching(tiny_backbone, final_distribution=[0.2, 0.3, 0.5])
    with pytest.raises(RuntimeError, match="run `fit` to calibrate it"):
        switching(tiny_backbone).sample(2)
    unconditional = DiffusionPretraining(
        output_dir=str(tmp_path / "u"), block_out_channels=(8, 16), norm_num_groups=4
    ).export(tmp_path / "u")
    with pytest.raises(ValueError, match="AttributeSwitching needs a backbone conditioned on class labels or text"):
        switching(unconditional)


def test_switch_distances_follow_the_definition(tiny_backbone: Path) -> None:
    """D(tau) per sample, recomputed step by step from the definition (A: steps with t > tau, B: the rest)."""
    method = switching(tiny_backbone)
    indices = torch.tensor([3, 8])
    with torch.no_grad():
        distances = method.switch_distances(indices)
        x_start = per_sample_randn(sample_generators(0, indices, NOISE_STREAM), (3, 32, 32), torch.device("cpu"))
        d = []
        chains = [x_start.clone(), x_start.clone()]
        for t in method.search.timesteps:
            eps = [method.backbone(chains[k], t, torch.full((2,), k)) for k in (0, 1)]
            d.append(method.search.betas[int(t)] * (eps[0] - eps[1]))
            chains = [method.search.step(eps[k], t, chains[k], eta=0.0).prev_sample for k in (0, 1)]
    assert distances.shape == (2, 3)
    for column, tau in enumerate(method.search.timesteps.tolist()):
        above = sum((d[j] for j, t in enumerate(method.search.timesteps.tolist()) if t > tau), torch.zeros_like(d[0]))
        below = sum((d[j] for j, t in enumerate(method.search.timesteps.tolist()) if t <= tau), torch.zeros_like(d[0]))
        expected = (above - below).flatten(1).norm(dim=1)  # one norm per sample, over C, H, W
        torch.testing.assert_close(distances[:, column], expected, rtol=1e-4, atol=1e-6)


def test_switch_distances_do_not_depend_on_the_batch(tiny_backbone: Path) -> None:
    """Each sample's D(tau) is its own: the shares of two processes add up to the curve of one process.

    The in-process proof of test_two_processes_find_the_same_tau (slow); test_metrics_ddp sums over processes.
    """
    method = switching(tiny_backbone)
    with torch.no_grad():
        together = method.switch_distances(torch.arange(7))
        shares = [method.switch_distances(torch.tensor(share)) for share in ([0, 2, 4, 6], [1, 3, 5])]
    torch.testing.assert_close(torch.cat(shares)[[0, 4, 1, 5, 2, 6, 3]], together, rtol=1e-4, atol=1e-6)
    assert (together[1:] - together[:1]).abs().max() > 1e-3  # every sample has a curve of its own


def test_identical_class_embeddings_make_every_tau_equal(tiny_backbone: Path) -> None:
    method = switching(tiny_backbone)
    with torch.no_grad():
        embedding = method.backbone.unet.class_embedding.weight
        embedding[1] = embedding[0]
        assert torch.all(method.switch_distances(torch.arange(2)) < 1e-6)


def test_fit_calibrates_tau_and_checkpoints_it(tiny_backbone: Path, tmp_path: Path) -> None:
    method = switching(tiny_backbone)
    assert method.needs_fit
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(method, GenerationRequests(num_samples=4, batch_size=3, calibration_samples=5))
    with (tmp_path / "tau_curve.csv").open() as handle:
        curve = [(int(row["tau"]), float(row["distance"])) for row in csv.DictReader(handle)]
    assert [tau for tau, _ in curve] == method.search.timesteps.tolist()
    assert int(method.tau) == min(curve, key=lambda point: point[1])[0]
    assert (tmp_path / "tau_curve.png").stat().st_size > 1000
    assert not method.needs_fit

    checkpoint = tmp_path / "switching.ckpt"
    trainer.save_checkpoint(checkpoint)
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert list(state) == ["tau"]  # nothing of the frozen backbone
    restored = AttributeSwitching.load_from_checkpoint(checkpoint)
    assert int(restored.tau) == int(method.tau)
    assert not restored.needs_fit


@pytest.mark.slow  # in-process: test_switch_distances_do_not_depend_on_the_batch
def test_two_processes_find_the_same_tau(tiny_backbone: Path, tmp_path: Path, write_config: Callable) -> None:
    config = write_config(
        "switching",
        {
            "trainer": {"accelerator": "cpu", "max_epochs": 1, "logger": False, "enable_progress_bar": False},
            "model": {"class_path": "AttributeSwitching", "init_args": {"backbone": tiny_backbone, "search_steps": 4}},
            "data": {"class_path": "GenerationRequests", "init_args": {"batch_size": 4, "calibration_samples": 7}},
        },
    )
    curves = {}
    for devices in (1, 2):
        folder = tmp_path / f"devices{devices}"
        strategy = ["--trainer.strategy=ddp"] if devices == 2 else []
        command = [sys.executable, "-m", "lightning_fair", "fit", "-c", str(config), f"--trainer.devices={devices}"]
        command += [f"--trainer.default_root_dir={folder}", *strategy]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        with (folder / "tau_curve.csv").open() as handle:
            curves[devices] = [(int(row["tau"]), float(row["distance"])) for row in csv.DictReader(handle)]
    assert [tau for tau, _ in curves[2]] == [tau for tau, _ in curves[1]]
    for (_, one), (_, two) in zip(curves[1], curves[2], strict=True):
        assert two == pytest.approx(one, rel=1e-4)
