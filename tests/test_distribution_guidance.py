"""Distribution Guidance and per-sample h-space guidance: ADP training, the guidance step, DDP, checkpoints."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

import lightning_fair.methods.hspace.distribution_guidance as hspace_guidance
from lightning_fair.data import GenerationRequests
from lightning_fair.diffusion import SamplingState
from lightning_fair.methods import (
    AttributeDistributionPredictor,
    DistributionGuidance,
    HSpaceSampleGuidance,
    PlainSampling,
)
from lightning_fair.metrics import GroupedAccuracy


def guidance(backbone: Path, classifier: Path, method: type = DistributionGuidance, **options: object):
    settings = {"target_distributions": {"Male": [0.5, 0.5]}, "sampler": {"num_inference_steps": 4, "eta": 1.0}}
    return method(str(backbone), str(classifier), **{**settings, **options})


def test_grouped_accuracy_counts() -> None:
    metric = GroupedAccuracy(3)
    metric.update(torch.tensor([1, 0, 1, 1]), torch.tensor([1, 1, 1, 0]), torch.tensor([0, 0, 2, 2]))
    metric.update(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    accuracy = metric.compute()
    assert accuracy[0].item() == pytest.approx(2 / 3)
    assert torch.isnan(accuracy[1])  # no samples
    assert accuracy[2].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="Groups must lie in 0..2"):
        metric.update(torch.tensor([0]), torch.tensor([0]), torch.tensor([3]))


def test_predictor_heads_by_nearest_timestep() -> None:
    torch.manual_seed(0)
    predictor = AttributeDistributionPredictor((4, 2, 2), 2, torch.tensor([750, 500, 250, 0]))
    assert predictor.head_index(torch.tensor([999, 740, 260, 0, 124])).tolist() == [0, 0, 2, 3, 3]
    h = torch.randn(5, 4, 2, 2)
    t = torch.tensor([750, 0, 750, 500, 250])
    mixed = predictor(h, t)
    for row in range(5):
        head = predictor.heads[int(predictor.head_index(t[row : row + 1]))]
        torch.testing.assert_close(mixed[row], head(h[row].flatten()))
    assert predictor(h, 500).shape == (5, 2)
    with pytest.raises(ValueError, match="'head' must be 'linear' or 'mlp'"):
        AttributeDistributionPredictor((4, 2, 2), 2, torch.tensor([0]), head="conv")


def test_options_are_checked(tiny_backbone: Path, tiny_classifier: Path) -> None:
    with pytest.raises(ValueError, match="no attribute 'Age'"):
        guidance(tiny_backbone, tiny_classifier, target_distributions={"Age": [0.5, 0.5]})
    with pytest.raises(ValueError, match="'target_distributions.Male' must sum to 1"):
        guidance(tiny_backbone, tiny_classifier, target_distributions={"Male": [0.5, 0.6]})
    with pytest.raises(ValueError, match="must be positive for the chi2 loss"):
        guidance(tiny_backbone, tiny_classifier, target_distributions={"Male": [0.0, 1.0]})
    with pytest.raises(ValueError, match="'loss' must be 'chi2' or 'kl'"):
        guidance(tiny_backbone, tiny_classifier, loss="l2")
    with pytest.raises(ValueError, match="'h_source' must be 'noised' or 'inversion'"):
        guidance(tiny_backbone, tiny_classifier, h_source="random")


def test_predictors_cover_the_sampler_timesteps(tiny_backbone: Path, tiny_classifier: Path) -> None:
    method = guidance(tiny_backbone, tiny_classifier, target_distributions={"Male": [0.3, 0.7], "Blond_Hair": None})
    assert list(method.predictors) == ["Male", "Blond_Hair"]
    assert method.targets["Blond_Hair"].tolist() == [0.5, 0.5]
    for predictor in method.predictors.values():
        assert torch.equal(predictor.timesteps, method.sampler.timesteps)
        assert len(predictor.heads) == 4
        assert predictor.heads[0].in_features == 16 * 16 * 16  # h of the tiny UNet: 16 channels at 16x16
    assert method.needs_fit
    # The official sampler (stochastic DDIM) unless eta is given: by default and under a partial sampler dict.
    default = DistributionGuidance(str(tiny_backbone), str(tiny_classifier), {"Male": [0.5, 0.5]})
    assert default.sampler.config.eta == 1.0
    partial = guidance(tiny_backbone, tiny_classifier, sampler={"num_inference_steps": 3})
    assert (partial.sampler.config.eta, len(partial.sampler.timesteps)) == (1.0, 3)
    deterministic = guidance(tiny_backbone, tiny_classifier, sampler={"num_inference_steps": 3, "eta": 0.0})
    assert deterministic.sampler.config.eta == 0.0


@pytest.mark.parametrize("loss", ["chi2", "kl"])
def test_guidance_step_pulls_the_batch_distribution_to_the_target(
    tiny_backbone: Path, tiny_classifier: Path, loss: str
) -> None:
    torch.manual_seed(0)
    method = guidance(
        tiny_backbone, tiny_classifier, target_distributions={"Male": [0.3, 0.7]}, loss=loss, guidance_scale=10.0
    )
    h, t = torch.randn(16, 16, 16, 16), method.sampler.timesteps[1]
    state = SamplingState(indices=torch.arange(16))
    target = torch.tensor([0.3, 0.7])
    distances = []
    for _ in range(4):
        p_hat = method.probabilities(h, t)["Male"].mean(dim=0)
        distances.append((p_hat - target).abs().sum().item())
        h = method.edit_h(h, t, state)
    assert distances == sorted(distances, reverse=True)
    assert distances[-1] < 0.5 * distances[0]


def test_a_share_of_the_batch_is_guided_by_the_global_batch_distribution(
    tiny_backbone: Path, tiny_classifier: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes in one: each share of a batch, given the other share's sums, is guided as the whole batch is.

    The in-process proof of the 2-process run (test_two_processes_give_the_global_batch_guidance_of_one, slow).
    """
    method = guidance(tiny_backbone, tiny_classifier, target_distributions={"Male": [0.3, 0.7]}, guidance_scale=10.0)
    torch.manual_seed(0)
    h, t = torch.randn(6, 16, 16, 16), method.sampler.timesteps[1]
    indices = torch.arange(6)
    whole = method.edit_h(h, t, SamplingState(indices=indices))
    shares = []
    for mine, theirs in ((slice(0, 4), slice(4, 6)), (slice(4, 6), slice(0, 4))):  # uneven shares
        with torch.no_grad():
            probabilities = method.probabilities(h[theirs], t)["Male"]
        others = torch.cat([probabilities.sum(dim=0), torch.tensor([float(len(probabilities))])])
        monkeypatch.setattr(hspace_guidance, "sum_over_processes", lambda local, others=others: local + others)
        shares.append(method.edit_h(h[mine], t, SamplingState(indices=indices[mine])))
    torch.testing.assert_close(torch.cat(shares), whole, rtol=1e-4, atol=1e-5)
    monkeypatch.undo()
    alone = method.edit_h(h[:4], t, SamplingState(indices=indices[:4]))  # a share guided by its own distribution
    assert not torch.allclose(alone, whole[:4], rtol=1e-4, atol=1e-5)


def test_scales_per_attribute_weight_each_loss(tiny_backbone: Path, tiny_classifier: Path) -> None:
    """{"Male": 3, "Blond_Hair": 0} moves h exactly as guiding Male alone with scale 3."""
    torch.manual_seed(0)
    targets = {"Male": [0.3, 0.7], "Blond_Hair": [0.6, 0.4]}
    joint = guidance(
        tiny_backbone, tiny_classifier, target_distributions=targets, guidance_scale={"Male": 3.0, "Blond_Hair": 0.0}
    )
    alone = guidance(tiny_backbone, tiny_classifier, target_distributions={"Male": [0.3, 0.7]}, guidance_scale=3.0)
    alone.predictors["Male"].load_state_dict(joint.predictors["Male"].state_dict())
    h, t = torch.randn(8, 16, 16, 16), joint.sampler.timesteps[1]
    state = SamplingState(indices=torch.arange(8))
    edited = joint.edit_h(h, t, state)
    assert not torch.equal(edited, h)
    torch.testing.assert_close(edited, alone.edit_h(h, t, state))
    with pytest.raises(ValueError, match=r"one scale per attribute of 'target_distributions' \['Male', 'Blond_Hair'\]"):
        guidance(tiny_backbone, tiny_classifier, target_distributions=targets, guidance_scale={"Male": 3.0})


def test_sample_guidance_pushes_each_sample_to_its_class(tiny_backbone: Path, tiny_classifier: Path) -> None:
    torch.manual_seed(0)
    method = guidance(tiny_backbone, tiny_classifier, method=HSpaceSampleGuidance, guidance_scale=10.0)
    state = method.init_state(torch.arange(32))
    classes = state.conditions["Male"]
    assert 0 < classes.sum() < 32  # drawn from [0.5, 0.5]
    h, t = torch.randn(32, 16, 16, 16), method.sampler.timesteps[2]
    before = method.probabilities(h, t)["Male"].gather(1, classes.view(-1, 1))
    after = method.probabilities(method.edit_h(h, t, state), t)["Male"].gather(1, classes.view(-1, 1))
    assert (after > before).all()
    # Sample i depends only on (seed, i): the same images in one batch of 4 or two of 2.
    joint, _ = method.sample(torch.arange(4))
    split = torch.cat([method.sample(torch.arange(0, 2))[0], method.sample(torch.arange(2, 4))[0]])
    torch.testing.assert_close(joint, split, atol=1e-4, rtol=1e-4)


def test_fit_trains_only_the_predictors_on_pseudo_labels(
    tiny_backbone: Path, tiny_classifier: Path, faces_requests: GenerationRequests, tmp_path: Path
) -> None:
    method = guidance(tiny_backbone, tiny_classifier)
    frozen = {name: p.clone() for name, p in method.named_parameters() if not name.startswith("predictors.")}
    before = {name: p.clone() for name, p in method.predictors.named_parameters()}
    images = torch.rand(6, 3, 32, 32) * 2 - 1
    expected = method.classifier.predict(images)[:, 0]
    assert torch.equal(method.pseudo_labels(images)["Male"], expected)

    data = faces_requests
    trainer = Trainer(
        max_steps=3, limit_val_batches=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(method, data)
    assert all(torch.equal(p, frozen[name]) for name, p in method.named_parameters() if name in frozen)
    assert any(not torch.equal(p, before[name]) for name, p in method.predictors.named_parameters())
    with (tmp_path / "adp_accuracy.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["timestep"]) for row in rows] == method.sampler.timesteps.tolist()
    assert all(0.0 <= float(row["Male"]) <= 1.0 for row in rows)

    checkpoint = tmp_path / "guidance.ckpt"
    trainer.save_checkpoint(checkpoint)
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert state
    assert all(key.startswith("predictors.") for key in state)
    restored = DistributionGuidance.load_from_checkpoint(checkpoint)
    torch.testing.assert_close(restored.predictors.state_dict(), method.predictors.state_dict())
    torch.testing.assert_close(restored.classifier.state_dict(), method.classifier.state_dict())


def test_inversion_features_follow_the_ddim_inversion(tiny_backbone: Path, tiny_classifier: Path) -> None:
    method = guidance(tiny_backbone, tiny_classifier, h_source="inversion")
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        h, t = method.training_features(images)
        assert h.shape == (12, 16, 16, 16)
        assert t.tolist() == [t_ for t_ in method.sampler.timesteps.flip(0).tolist() for _ in range(3)]
        # The first h is that of the clean images at the smallest timestep.
        null = method.backbone.null_condition(3, "cpu")
        torch.testing.assert_close(h[:3], method.backbone.h(images, t[0], null))


def test_checkpoint_of_another_method_is_refused(tiny_backbone: Path, tiny_classifier: Path, tmp_path: Path) -> None:
    trainer = Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.strategy.connect(PlainSampling(str(tiny_backbone)))
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="written by PlainSampling, not by DistributionGuidance"):
        Trainer(logger=False, enable_progress_bar=False).test(
            guidance(tiny_backbone, tiny_classifier),
            GenerationRequests(num_samples=2, batch_size=2),
            ckpt_path=tmp_path / "plain.ckpt",
        )


def run_cli(args: list[str], cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "lightning_fair", *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow  # in-process: test_a_share_of_the_batch_is_guided_by_the_global_batch_distribution
def test_two_processes_give_the_global_batch_guidance_of_one(
    tiny_backbone: Path, tiny_classifier: Path, faces_root: Path, tmp_path: Path, write_config: Callable
) -> None:
    """2 processes x B/2 get the guidance of 1 x B: the batch distribution is taken over all processes."""
    images = {"root": faces_root, "attributes": ["Male"], "sensitive": "Male", "image_size": 32, "batch_size": 8}
    config = write_config(
        "guidance",
        {
            "seed_everything": 0,
            "trainer": {
                "accelerator": "cpu",
                "max_steps": 2,
                "limit_val_batches": 0,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "logger": False,
            },
            "model": {
                "class_path": "DistributionGuidance",
                "init_args": {
                    "backbone": tiny_backbone,
                    "classifier": tiny_classifier,
                    "target_distributions": {"Male": [0.2, 0.8]},
                    "guidance_scale": 300.0,
                    "sampler": {"num_inference_steps": 3, "eta": 1.0},
                },
            },
            "data": {
                "class_path": "GenerationRequests",
                "init_args": {
                    "num_samples": 9,
                    "batch_size": 4,
                    "train_data": {"class_path": "CelebADataModule", "init_args": images},
                },
            },
        },
    )
    checkpoint = tmp_path / "fitted.ckpt"
    run_cli(["fit", "-c", str(config), f"--trainer.default_root_dir={tmp_path}"], cwd=tmp_path)
    [last] = sorted(tmp_path.rglob("*.ckpt"))
    last.rename(checkpoint)
    images: dict[str, np.ndarray] = {}
    # "off" also shows that --ckpt_path does not bring back the checkpoint's options over the command line.
    runs = {
        "one": [],
        "two": ["--trainer.devices=2", "--trainer.strategy=ddp"],
        "off": ["--model.init_args.guidance_scale=0"],
    }
    for name, extra in runs.items():
        folder = tmp_path / name
        writer = json.dumps([{"class_path": "GenerationWriter", "init_args": {"output_dir": str(folder)}}])
        run_cli(
            ["test", "-c", str(config), f"--trainer.callbacks={writer}", f"--ckpt_path={checkpoint}", *extra],
            cwd=tmp_path,
        )
        paths = sorted((folder / "images").glob("*.png"))
        images[name] = np.stack([np.asarray(Image.open(path)).astype(int) for path in paths])
    # 9 samples in global batches of 4, 4, 1: in the last one, the second process has nothing and still joins in.
    assert len(images["one"]) == len(images["two"]) == 9
    differences = images["one"] - images["two"]
    assert np.abs(differences).max() <= 1  # float summation order may flip a rounding
    assert np.count_nonzero(differences) <= differences.size // 1000
    assert np.abs(images["one"] - images["off"]).mean() > 1  # the guidance did change the images


@pytest.mark.parametrize("method_class", [DistributionGuidance, HSpaceSampleGuidance])
def test_guidance_runs_under_inference_mode(tiny_backbone: Path, tiny_classifier: Path, method_class: type) -> None:
    """Lightning's test loop samples under torch.inference_mode; the gradient on h must still work."""
    method = guidance(tiny_backbone, tiny_classifier, method=method_class)
    expected, _ = method.sample(3)
    with torch.inference_mode():
        images, _ = method.sample(3)
    torch.testing.assert_close(images, expected)


def test_balanced_sample_guidance_draws_every_class_pair_exactly(tiny_backbone: Path, tiny_classifier: Path) -> None:
    targets = {"Male": [0.5, 0.5], "Blond_Hair": [0.25, 0.75]}
    sampler = {"num_inference_steps": 2, "condition_draw": "balanced"}
    method = guidance(
        tiny_backbone, tiny_classifier, HSpaceSampleGuidance, target_distributions=targets, sampler=sampler
    )
    states = [method.init_state(batch) for batch in torch.arange(512).split(96)]
    male = torch.cat([state.conditions["Male"] for state in states])
    blond = torch.cat([state.conditions["Blond_Hair"] for state in states])
    assert torch.bincount(male * 2 + blond).tolist() == [64, 192, 64, 192]  # the joint of independent targets
