"""InvDiff: output mixing, group-invariance loss, the grouper (1 and 2 processes), training and sampling."""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_fair.backbones import load_backbone
from lightning_fair.classifiers import load_classifier
from lightning_fair.data import CelebADataModule
from lightning_fair.data.dataset import AttributeImageDataset
from lightning_fair.data.keyed_rows import KeyedRows, split_fingerprint
from lightning_fair.diffusion import DiffusionSampler, SamplerConfig, Step
from lightning_fair.main import main
from lightning_fair.methods import ConditionalSampling, InvDiff
from lightning_fair.methods.invdiff import group_invariance_loss, mix_eps, optimise_group_weights
from lightning_fair.methods.invdiff.grouper import (
    cluster_groups,
    group_agreement,
    image_losses,
    minority_share,
    per_sample_losses,
    tail_groups,
)
from lightning_fair.metrics import FairnessSuite

# ------------------------------------------------------------------------------------------------ the objective


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [(0.25, 0.25 * 4 + 0.75 * 2), (1.0, 4.0), (-0.5, -0.5 * 4 + 1.5 * 2), (3.0, 3 * 4 + 2), (-1.0, 4 + 2), (-7, 6)],
)
def test_mix_eps_has_the_three_official_regimes(ratio: float, expected: float) -> None:
    mixed = mix_eps(torch.tensor([2.0]), torch.tensor([4.0]), ratio)
    assert mixed.item() == pytest.approx(expected)


def test_group_invariance_loss_by_hand() -> None:
    losses = torch.tensor([1.0, 3.0, 2.0, 6.0])
    groups = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5]])
    loss, group_losses = group_invariance_loss(losses, groups, invariance_weight=2.0)
    # group 0: (1 + 3) / 2 = 2; group 1: (2 + 3) / 1.5 = 10/3; group 2: 3 / 0.5 = 6
    expected_groups = torch.tensor([2.0, 10 / 3, 6.0])
    torch.testing.assert_close(group_losses, expected_groups, rtol=1e-6, atol=1e-6)
    mean = expected_groups.mean()
    variance = ((expected_groups - mean) ** 2).sum() / 2  # unbiased
    assert loss.item() == pytest.approx((mean + 2.0 * variance).item(), rel=1e-6)


def test_group_invariance_loss_leaves_out_absent_groups() -> None:
    losses = torch.tensor([1.0, 3.0])
    one_group = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss, group_losses = group_invariance_loss(losses, one_group, invariance_weight=1.0)
    assert loss.item() == pytest.approx(2.0)  # a single group left: its mean, no variance
    assert group_losses[1].item() == 0


# ------------------------------------------------------------------------------------------------ the grouper


def test_group_weights_separate_high_and_low_losses() -> None:
    generator = torch.Generator().manual_seed(0)
    high = torch.rand(40, generator=generator) * 0.1 + 1.0
    low = torch.rand(160, generator=generator) * 0.1
    losses = torch.cat([low, high])
    weights = optimise_group_weights(losses, num_groups=2, steps=500, learning_rate=0.01, seed=0)
    assert weights.shape == (200, 2)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(200))
    assert (weights >= 0).all()
    truth = np.array([0] * 160 + [1] * 40)
    agreement = group_agreement(weights, truth)
    assert agreement["nmi"] > 0.9
    assert agreement["purity"] > 0.95
    again = optimise_group_weights(losses, num_groups=2, steps=500, learning_rate=0.01, seed=0)
    assert torch.equal(weights, again)


def test_timestep_normalisation_lets_every_timestep_count_alike() -> None:
    # image 2 is the worst fitted at the small-loss timestep only; the large-loss timestep drowns it in a plain mean
    losses = torch.tensor([[1.00, 0.010], [1.06, 0.010], [1.02, 0.016], [1.00, 0.010]], dtype=torch.float64)
    torch.testing.assert_close(image_losses(losses, "none"), losses.mean(dim=1))
    assert image_losses(losses, "none").argmax() == 1
    normalised = image_losses(losses, "timestep")
    expected = ((losses - losses.mean(dim=0)) / losses.std(dim=0)).mean(dim=1)
    torch.testing.assert_close(normalised, expected)
    assert normalised.argmax() == 2


def test_tail_groups_take_each_class_worst_fitted_share() -> None:
    losses = torch.tensor([0.1, 0.9, 0.2, 0.3, 0.8, 0.5, 0.4, 0.6, 0.7, 0.0])
    classes = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    groups = tail_groups(losses, classes, num_classes=2, tail_share=0.4)  # 2 of each class's 5 images
    assert groups.shape == (10, 4)
    assert groups.argmax(dim=1).tolist() == [0, 1, 0, 0, 1, 2, 2, 3, 3, 2]


def test_cluster_groups_split_each_class_apart() -> None:
    # Class 0: 6 images along one direction and 2 along another; class 1: 4 images along a third. A global k-means
    # of 2 clusters would split the classes; within class 0 the 2 images of the other direction are a group.
    features = torch.tensor([[1.0, 0.0, 0.0]] * 6 + [[0.0, 1.0, 0.0]] * 2 + [[0.0, 0.0, 1.0]] * 4)
    features = features + 0.01 * torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    classes = torch.tensor([0] * 8 + [1] * 4)
    groups = cluster_groups(features, classes, num_classes=2, num_clusters=2, seed=0).argmax(dim=1)
    assert len(set(groups[:6].tolist())) == len(set(groups[6:8].tolist())) == 1
    assert groups[0] != groups[6]
    assert set(groups[:8].tolist()) == {0, 1}  # class 0's groups
    assert set(groups[8:].tolist()) <= {2, 3}  # class 1's
    single = cluster_groups(features[:1], classes[:1], num_classes=2, num_clusters=2, seed=0)
    assert single.tolist() == [[1.0, 0.0, 0.0, 0.0]]  # a class of fewer images than clusters


def test_minority_share_by_hand() -> None:
    true_groups = np.array([0, 0, 0, 1, 2, 3, 3, 3])  # target 0: sensitive 0 dominates; target 1: sensitive 1
    conflicting = [3, 4]  # groups 1 and 2
    one_group = torch.ones(8, 1)
    assert minority_share(one_group, true_groups, 2) == pytest.approx({"share": 2 / 8, "images": 2 / 8})
    weights = torch.zeros(8, 2)
    weights[conflicting, 1] = 1
    weights[[0, 1, 2, 5, 6, 7], 0] = 1
    assert minority_share(weights, true_groups, 2)["share"] == pytest.approx(0.5)  # their own group: half the loss


def test_group_weights_need_two_groups() -> None:
    with pytest.raises(ValueError, match="'num_groups' must be at least 2"):
        optimise_group_weights(torch.rand(10), num_groups=1)


PROVENANCE = {"backbone": "model", "dataset": "d", "split": "train", "fingerprint": "abc", "num_groups": "2"}


def _assignment() -> KeyedRows:
    weights = torch.tensor([[0.2, 0.8], [1.0, 0.0], [0.5, 0.5]])
    return KeyedRows(torch.tensor([3, 8, 11]), {"weights": weights}, dict(PROVENANCE))


def test_groups_file_round_trip_and_rows_by_dataset_index(tmp_path: Path) -> None:
    path = tmp_path / "groups.safetensors"
    _assignment().save(path)
    loaded = KeyedRows.load(path, "groups_file", "groups")
    loaded.check(path, "groups_file", "groups", PROVENANCE)
    torch.testing.assert_close(loaded.rows("weights", torch.tensor([11, 3])), torch.tensor([[0.5, 0.5], [0.2, 0.8]]))
    with pytest.raises(ValueError, match="Dataset index 4 has no row"):
        loaded.rows("weights", torch.tensor([3, 4]))


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("backbone", "other", "holds groups of backbone 'model', not 'other'"),
        ("fingerprint", "xyz", "holds groups of fingerprint 'abc', not 'xyz'"),
        ("num_groups", "4", "holds groups of num_groups '2', not '4'"),
    ],
)
def test_groups_file_of_something_else_is_refused(tmp_path: Path, key: str, value: str, match: str) -> None:
    path = tmp_path / "groups.safetensors"
    _assignment().save(path)
    with pytest.raises(ValueError, match=f"Option 'groups_file': '.*' {match}"):
        KeyedRows.load(path, "groups_file", "groups").check(path, "groups_file", "groups", {**PROVENANCE, key: value})


def test_a_file_that_is_no_groups_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "groups.safetensors"
    path.write_text("not a groups file")
    with pytest.raises(ValueError, match=r"Option 'groups_file': '.*' is not a groups file"):
        KeyedRows.load(path, "groups_file", "groups")


def _grouper_inputs(backbone_folder: str, faces_root: str) -> dict:
    backbone = load_backbone(backbone_folder)
    data = CelebADataModule(root=faces_root, attributes=["Male", "Blond_Hair"], sensitive="Male", image_size=32)
    rows = data.split_indices("train")
    dataset = AttributeImageDataset(
        [data.table.image_paths[row] for row in rows], data.table.attributes[rows], rows, data.transform(False)
    )
    sampler = DiffusionSampler(backbone.scheduler_config, SamplerConfig())
    return {
        "backbone": backbone,
        "dataset": dataset,
        "condition_of": lambda attributes: attributes[:, 0],
        "add_noise": sampler.add_noise,
        "seed": 5,
        "timesteps": None,
        "batch_size": 16,
        "device": torch.device("cpu"),
    }


def _grouper_worker(rank: int, world_size: int, port: int, out_dir: str, backbone: str, faces_root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        indices, losses = per_sample_losses(**_grouper_inputs(backbone, faces_root), rank=rank, world_size=world_size)
        weights = optimise_group_weights(losses.mean(dim=1), num_groups=4, steps=100)
        torch.save({"indices": indices, "losses": losses, "weights": weights}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_process_shares_of_the_grouping_pass_make_up_the_one_process_pass(
    tiny_backbone: Path, faces_root: Path
) -> None:
    """Each process's share (without the gather) holds its own images once; together they are the 1-process pass."""
    inputs = _grouper_inputs(str(tiny_backbone), str(faces_root))
    indices, losses = per_sample_losses(**inputs)
    shares = [per_sample_losses(**inputs, rank=rank, world_size=2) for rank in range(2)]
    assert [len(share_indices) for share_indices, _ in shares] == [128, 112]  # batches of 16: 8 and 7
    together = torch.cat([share_indices for share_indices, _ in shares])
    order = torch.argsort(together)
    assert torch.equal(together[order], indices)
    torch.testing.assert_close(torch.cat([share for _, share in shares])[order], losses, rtol=1e-6, atol=0)


@pytest.mark.slow  # two spawned processes; the shares are checked fast above, the gather in test_metrics_ddp
def test_two_processes_infer_the_same_groups_as_one(tiny_backbone: Path, faces_root: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        indices, losses = per_sample_losses(**_grouper_inputs(str(tiny_backbone), str(faces_root)))
    finally:
        torch.set_num_threads(threads)
    weights = optimise_group_weights(losses.mean(dim=1), num_groups=4, steps=100)
    assert len(indices) == len(set(indices.tolist())) == 240  # the train split, each image once
    assert torch.equal(indices, indices.sort().values)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_grouper_worker, args=(2, port, str(tmp_path), str(tiny_backbone), str(faces_root)), nprocs=2, join=True)
    for rank in range(2):  # 15 batches of 16: process 0 computes 8, process 1 computes 7
        result = torch.load(tmp_path / f"{rank}.pt")
        assert torch.equal(result["indices"], indices)
        torch.testing.assert_close(result["losses"], losses, rtol=1e-6, atol=0)
        torch.testing.assert_close(result["weights"], weights, rtol=0, atol=1e-5)


def test_grouping_losses_depend_on_the_image_not_the_batch(tiny_backbone: Path, faces_root: Path) -> None:
    inputs = _grouper_inputs(str(tiny_backbone), str(faces_root))
    indices, losses = per_sample_losses(**inputs)
    inputs["batch_size"] = 7
    again_indices, again = per_sample_losses(**inputs)
    assert torch.equal(indices, again_indices)
    torch.testing.assert_close(losses, again, rtol=1e-5, atol=0)
    inputs["timesteps"] = [999]  # the noisiest step: the loss is close to the noise's own scale
    _, noisy = per_sample_losses(**inputs)
    inputs["timesteps"] = [999, 999]
    _, two = per_sample_losses(**inputs)
    assert losses.shape == noisy.shape == (240, 1)  # a column per timestep
    assert two.shape == (240, 2)
    assert not torch.allclose(noisy, losses)
    torch.testing.assert_close(two[:, 0], noisy[:, 0])
    assert not torch.allclose(two[:, 1], noisy[:, 0])  # a second draw of noise for the second timestep


# ------------------------------------------------------------------------------------------------ the method


def test_a_fresh_delta_leaves_the_frozen_model_unchanged_in_the_residual_regimes(tiny_backbone: Path) -> None:
    sampler = {"num_inference_steps": 3, "eta": 1.0}
    reference, _ = ConditionalSampling(str(tiny_backbone), sampler=sampler).sample(torch.arange(5))
    for ratio in (-1.0, 2.0):
        images, state = InvDiff(str(tiny_backbone), sampler=sampler, delta_ratio=ratio).sample(torch.arange(5))
        torch.testing.assert_close(images, reference, rtol=0, atol=1e-6)
    method = InvDiff(str(tiny_backbone), sampler=sampler, delta_ratio=0.25)  # starts at (1 - r) eps
    x = torch.randn(2, 3, 32, 32)
    step = Step(0, torch.tensor(500), 3)
    state = method.init_state(torch.arange(2))
    frozen = method.unet_eps(x, step, state)
    torch.testing.assert_close(method.guided_eps(x, step, state), 0.75 * frozen)


def test_delta_is_of_the_backbone_kind_and_smaller(tiny_backbone: Path, tiny_sd: Path) -> None:
    pixel = InvDiff(str(tiny_backbone))
    assert type(pixel.delta).__name__ == "UNet2DModel"
    assert pixel.delta.config.num_class_embeds == pixel.backbone.unet.config.num_class_embeds
    assert pixel.parameter_counts["delta"] < pixel.parameter_counts["frozen_unet"] / 4
    text = InvDiff(str(tiny_sd), prompts={"classes": ["a photo of a woman", "a photo of a man"], "attribute": "Male"})
    assert type(text.delta).__name__ == "UNet2DConditionModel"
    copy = InvDiff(str(tiny_backbone), init_from_backbone=True)
    frozen = dict(copy.backbone.unet.named_parameters())
    for name, parameter in copy.delta.named_parameters():
        if name.startswith("conv_out"):
            assert not parameter.any()
        else:
            assert torch.equal(parameter, frozen[name])
    assert all(parameter.requires_grad for parameter in copy.delta.parameters())
    assert not any(parameter.requires_grad for parameter in copy.backbone.parameters())


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"num_groups": 1}, "'num_groups' \\(K\\) must be at least 2"),
        ({"delta_ratio": 0.0}, "'delta_ratio' must be a finite non-zero number"),
        ({"delta_ratio": float("nan")}, "'delta_ratio' must be a finite non-zero number"),
        ({"groups": "clusters"}, "'groups' must be 'inferred' or 'labels'"),
        ({"delta_channels": [8, 16, 32]}, "'delta_channels' must give one width per level"),
        ({"delta_channels": [6, 16]}, "multiples of the frozen UNet's norm_num_groups \\(4\\)"),
        ({"delta_channels": [4, 8], "init_from_backbone": True}, "'init_from_backbone' copies the frozen UNet"),
        ({"grouper_timesteps": [1000]}, "'grouper_timesteps' must lie in 0..999"),
        ({"invariance_weight": -1.0}, "invariance_weight"),
    ],
)
def test_bad_options_are_one_clear_error(tiny_backbone: Path, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InvDiff(str(tiny_backbone), **options)


@pytest.fixture
def invdiff_config(
    tiny_backbone: Path, tiny_classifier: Path, faces_root: Path, tmp_path: Path, write_config: Callable
) -> Callable:
    """Writes a fit/test config of InvDiff on the tiny models; returns a function of extra model/data options."""

    def write(name: str = "invdiff", model: dict | None = None, data: dict | None = None) -> Path:
        images = {
            "root": faces_root,
            "attributes": ["Male", "Blond_Hair"],
            "sensitive": "Blond_Hair",
            "target": "Male",
            "image_size": 32,
            "batch_size": 16,
            "num_workers": 0,
        }
        config = {
            "seed_everything": 0,
            "trainer": {
                "accelerator": "cpu",
                "max_steps": 3,
                "limit_val_batches": 1,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": tmp_path / "logs", "name": name},
                },
                "default_root_dir": tmp_path / name,  # the method's checkpoints/last.ckpt goes there
                "callbacks": [
                    {
                        "class_path": "FairnessEvaluator",
                        "init_args": {"classifier": tiny_classifier, "sensitive": "Blond_Hair"},
                    }
                ],
            },
            "model": {
                "class_path": "InvDiff",
                "init_args": {
                    "backbone": tiny_backbone,
                    "groups_file": tmp_path / "groups.safetensors",
                    "num_groups": 4,
                    "grouper_steps": 20,
                    "learning_rate": 1.0e-3,
                    "warmup_steps": 1,
                    "sampler": {"num_inference_steps": 2},
                    **(model or {}),
                },
            },
            "data": {
                "class_path": "GenerationRequests",
                "init_args": {
                    "num_samples": 8,
                    "batch_size": 4,
                    "train_data": {"class_path": "CelebADataModule", "init_args": {**images, **(data or {})}},
                },
            },
        }
        return write_config(name, config)

    return write


def test_fit_infers_groups_trains_the_delta_only_and_tests(invdiff_config: Callable, tmp_path: Path) -> None:
    config = invdiff_config()
    main(["fit", "-c", str(config)])
    groups = KeyedRows.load(tmp_path / "groups.safetensors", "groups_file", "groups")
    data = CelebADataModule(root=groups.provenance["dataset"], attributes=["Male"], sensitive="Male", image_size=32)
    rows = data.split_indices("train")
    assert torch.equal(groups.indices, torch.as_tensor(rows))
    assert groups.provenance["fingerprint"] == split_fingerprint([data.table.image_paths[r] for r in rows], data.root)
    torch.testing.assert_close(groups.tensors["weights"].sum(dim=1), torch.ones(len(rows)))
    report = (tmp_path / "groups.json").read_text()
    assert '"nmi"' in report
    assert '"pass_seconds"' in report
    checkpoint = torch.load(tmp_path / "invdiff" / "checkpoints" / "last.ckpt", weights_only=True)
    keys = checkpoint["state_dict"].keys()
    assert keys
    assert all(key.startswith("delta.") for key in keys)
    assert checkpoint["state_dict"]["delta.conv_out.weight"].abs().sum() > 0  # it trained
    main(["test", "-c", str(config), "--ckpt_path", str(tmp_path / "invdiff" / "checkpoints" / "last.ckpt")])
    metrics = next((tmp_path / "logs" / "invdiff").glob("version_*/metrics.json")).read_text()
    assert '"bias_score/Male=0"' in metrics
    assert '"bias_score_by/Male"' in metrics


def test_tail_groups_of_normalised_losses_are_inferred_and_reported(invdiff_config: Callable, tmp_path: Path) -> None:
    model = {"grouper": "tail", "grouper_normalisation": "timestep", "grouper_tail_share": 0.25}
    main(["fit", "-c", str(invdiff_config(name="tail", model=model)), "--trainer.max_steps", "1"])
    groups = KeyedRows.load(tmp_path / "groups.safetensors", "groups_file", "groups")
    assert groups.provenance["grouper"] == "tail"
    assert groups.provenance["normalisation"] == "timestep"
    weights, losses = groups.tensors["weights"], groups.tensors["losses"]
    assert weights.shape == (len(groups.indices), 4)  # each of the 2 classes: the rest and the tail
    assert set(weights.unique().tolist()) == {0.0, 1.0}
    tails = weights.argmax(dim=1) % 2 == 1
    assert abs(tails.float().mean().item() - 0.25) < 0.02
    assert losses[tails].mean() > losses[~tails].mean()
    report = json.loads((tmp_path / "groups.json").read_text())
    assert 0 < report["minority_share"]["share"] < 1


def test_cluster_groups_of_the_frozen_features_are_inferred_and_reported(
    invdiff_config: Callable, tmp_path: Path
) -> None:
    model = {"grouper": "clusters", "num_groups": 2, "grouper_feature_timestep": 100}
    main(["fit", "-c", str(invdiff_config(name="clusters", model=model)), "--trainer.max_steps", "1"])
    groups = KeyedRows.load(tmp_path / "groups.safetensors", "groups_file", "groups")
    assert groups.provenance["grouper"] == "clusters"
    assert groups.provenance["feature_timestep"] == "100"
    weights = groups.tensors["weights"]
    assert weights.shape == (len(groups.indices), 4)  # 2 classes x 2 clusters
    assert set(weights.unique().tolist()) == {0.0, 1.0}
    report = json.loads((tmp_path / "groups.json").read_text())
    assert len(report["group_mass"]) == 4
    assert sum(report["group_mass"]) == len(groups.indices)
    # Each group lies within one class of the condition (Male): groups 0 and 1 hold its class 0, groups 2 and 3 class 1.
    data = CelebADataModule(root=groups.provenance["dataset"], attributes=["Male"], sensitive="Male", image_size=32)
    male = torch.as_tensor(data.table.column("Male")[groups.indices.numpy()])
    assert torch.equal(weights.argmax(dim=1) // 2, male.long())


def test_groups_file_of_another_split_is_refused(invdiff_config: Callable, tmp_path: Path, cli_error: Callable) -> None:
    main(["fit", "-c", str(invdiff_config(name="first"))])
    other = invdiff_config(name="second", data={"max_samples_per_split": 100})
    line = cli_error(["fit", "-c", str(other)])
    assert "Option 'groups_file'" in line
    assert "holds groups of fingerprint" in line


def test_oracle_groups_train_without_a_groups_file(invdiff_config: Callable, tmp_path: Path) -> None:
    main(["fit", "-c", str(invdiff_config(name="oracle", model={"groups": "labels"}))])
    assert not (tmp_path / "groups.safetensors").exists()
    assert (tmp_path / "oracle" / "checkpoints" / "last.ckpt").is_file()


def test_bias_score_within_each_requested_class(tiny_classifier: Path) -> None:
    suite = FairnessSuite(load_classifier(str(tiny_classifier)), sensitive="Male")
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    requested = torch.tensor([0, 1] * 6)
    suite.update(images, {"Blond_Hair": requested})
    results = suite.compute().metrics()
    male = suite.classifier.predict_proba(images)["Male"].argmax(dim=1)
    scores = []
    for value in (0, 1):
        share = male[requested == value].float().mean().item()
        scores.append(abs(1 - 2 * share))
        assert results[f"bias_score/Blond_Hair={value}"] == pytest.approx(scores[-1], abs=1e-6)
    assert results["bias_score_by/Blond_Hair"] == pytest.approx(sum(scores) / 2, abs=1e-6)
    assert "bias_score_by/Male" not in results  # no sample was requested a Male class
    assert not math.isnan(results["bias_score"])
