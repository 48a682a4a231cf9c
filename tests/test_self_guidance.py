"""SelfGuidance: features, k-means self-annotation, cluster draws, the adapter, fit and test."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from lightning_fair.cli import build_cli
from lightning_fair.data.keyed_rows import KeyedRows
from lightning_fair.main import main
from lightning_fair.methods import PlainSampling, SelfGuidance
from lightning_fair.methods.lifecycle.calibration import choose_scale, fd_tolerance
from lightning_fair.methods.self_guidance import TimmFeatures, fit_clusters, solve_cluster_weights
from lightning_fair.methods.self_guidance.clusters import (
    assign_clusters,
    cluster_composition,
    cluster_frequencies,
    find_modes,
    labelled_members,
    mode_balanced_weights,
)


def test_kmeans_finds_separated_clusters_and_assigns_as_it_fitted() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    truth = torch.arange(3).repeat_interleave(20)
    scales = torch.rand(60, 1, generator=generator) * 5 + 0.5  # length carries nothing after normalisation
    features = (centres[truth] + 0.05 * torch.randn(60, 3, generator=generator)) * scales
    centroids, assignments = fit_clusters(features, 3, seed=0)
    for cluster in range(3):  # each cluster is one true group
        assert len(set(truth[assignments == cluster].tolist())) == 1
    assert torch.equal(assign_clusters(features, centroids), assignments)


def test_modes_are_the_dense_groups_whatever_their_size_and_weigh_alike() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:3] * 4
    sizes = [600, 60, 240]  # a 10:1 imbalance between the first two
    truth = torch.arange(3).repeat_interleave(torch.tensor(sizes))
    features = centres[truth] + 0.3 * torch.randn(len(truth), 8, generator=generator) + 1.0
    modes = find_modes(features, min_share=0.02, seed=0)
    found = modes[modes >= 0]
    assert int(found.max()) + 1 == 3
    for group in range(3):  # each group is one mode, and no mode mixes groups
        assert len(set(modes[(truth == group) & (modes >= 0)].tolist())) == 1
    _, assignments = fit_clusters(features, 9, seed=0)  # k-means splits the large group into many clusters
    weights = mode_balanced_weights(assignments, modes, 9)
    group_weights = torch.stack([weights[assignments[truth == group].unique()].sum() for group in range(3)])
    torch.testing.assert_close(group_weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    uniform_share = len(assignments[truth == 1].unique()) / 9
    assert uniform_share < 0.2  # a uniform draw over the k-means clusters gives the small group far less


def test_mode_balanced_weights_by_hand() -> None:
    assignments = torch.tensor([0, 0, 1, 1, 1, 2])
    modes = torch.tensor([0, 0, 0, 1, 1, -1])  # the last image lies between the modes
    weights = mode_balanced_weights(assignments, modes, 3)
    torch.testing.assert_close(weights, torch.tensor([1 / 3, 2 / 3, 0.0], dtype=torch.float64))


def test_no_mode_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"Option 'mode_min_share' \(0.9\): no density mode of at least 9 images"):
        find_modes(torch.randn(10, 4), min_share=0.9, seed=0)


def test_more_clusters_than_images_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'num_clusters' \(5\) is larger than the number of training images \(4\)"):
        fit_clusters(torch.randn(4, 3), 5, seed=0)


def test_cluster_composition_by_hand() -> None:
    composition = cluster_composition(torch.tensor([0, 0, 1, 1, 1]), torch.tensor([1, 0, 1, 1, 0]), 3, 2)
    expected = torch.tensor([[0.5, 0.5], [1 / 3, 2 / 3], [0.5, 0.5]], dtype=torch.float64)  # cluster 2 is empty
    torch.testing.assert_close(composition, expected)


def test_cluster_weights_reach_a_reachable_target_and_the_nearest_otherwise() -> None:
    composition = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]], dtype=torch.float64)  # P(Male) 0.1, 0.5, 0.9
    prior = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    target = torch.tensor([0.5, 0.5], dtype=torch.float64)
    weights, (reached,) = solve_cluster_weights([composition], [target], prior)
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (weights >= 0).all()
    torch.testing.assert_close(reached, target, atol=1e-4, rtol=0)
    _, (nearest,) = solve_cluster_weights([composition], [torch.tensor([0.0, 1.0], dtype=torch.float64)], prior)
    torch.testing.assert_close(nearest, torch.tensor([0.1, 0.9], dtype=torch.float64), atol=1e-3, rtol=0)


def test_timm_features_need_a_local_file_that_fits(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Option 'feature_weights': no weights file at"):
        TimmFeatures("test_vit", str(tmp_path / "missing.safetensors"))
    weights = tmp_path / "vit.safetensors"
    save_file(timm.create_model("test_vit", pretrained=False).state_dict(), str(weights))
    features = TimmFeatures("test_vit", str(weights))(torch.rand(2, 3, 32, 32) * 2 - 1, torch.arange(2))
    assert features.shape == (2, timm.create_model("test_vit", num_classes=0).num_features)
    with pytest.raises(ValueError, match="does not fit the timm architecture 'test_resnet'"):
        TimmFeatures("test_resnet", str(weights))


def test_a_fresh_adapter_samples_as_the_frozen_model(tiny_backbone: Path) -> None:
    sampler = {"num_inference_steps": 3, "eta": 1.0}
    reference, _ = PlainSampling(str(tiny_backbone), sampler=sampler).sample(torch.arange(4))
    method = SelfGuidance(str(tiny_backbone), sampler={**sampler, "cfg_scale": 2.0}, num_clusters=3)
    images, state = method.sample(torch.arange(4))
    torch.testing.assert_close(images, reference, rtol=0, atol=1e-6)  # a zero embedding guides nowhere
    assert state.conditions["cluster"].shape == (4,)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"num_clusters": 1}, "'num_clusters' \\(K\\) must be at least 2"),
        ({"cluster_distribution": "target"}, "'classifier' is needed"),
        ({"features": "timm"}, "needs 'feature_model' and a local 'feature_weights'"),
        ({"features": "dino"}, "'features' must be 'hspace', 'timm' or 'classifier'"),
        ({"feature_timestep": 1000}, "'feature_timestep' must lie in 0..999"),
    ],
)
def test_bad_options_are_one_clear_error(tiny_backbone: Path, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SelfGuidance(str(tiny_backbone), **options)


@pytest.fixture
def self_guidance_config(
    tiny_backbone: Path, tiny_classifier: Path, faces_root: Path, tmp_path: Path, write_config: Callable
) -> Callable:
    """Writes a fit/test config of SelfGuidance on the tiny models; returns a function of extra model options."""

    def write(name: str = "self_guidance", model: dict | None = None) -> Path:
        images = {
            "root": faces_root,
            "attributes": ["Male", "Blond_Hair"],
            "sensitive": "Male",
            "image_size": 32,
            "batch_size": 16,
            "num_workers": 0,
        }
        config = {
            "seed_everything": 0,
            "trainer": {
                "accelerator": "cpu",
                "max_steps": 3,
                "limit_val_batches": 0,
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
                        "init_args": {"classifier": tiny_classifier, "sensitive": "Male"},
                    }
                ],
            },
            "model": {
                "class_path": "SelfGuidance",
                "init_args": {
                    "backbone": tiny_backbone,
                    "clusters_file": tmp_path / "clusters.safetensors",
                    "num_clusters": 4,
                    "cluster_distribution": "uniform",
                    "learning_rate": 1.0e-3,
                    "warmup_steps": 1,
                    "sampler": {"num_inference_steps": 2, "cfg_scale": 2.0},
                    **(model or {}),
                },
            },
            "data": {
                "class_path": "GenerationRequests",
                "init_args": {
                    "num_samples": 8,
                    "batch_size": 4,
                    "train_data": {"class_path": "CelebADataModule", "init_args": images},
                },
            },
        }
        return write_config(name, config)

    return write


def test_fit_clusters_trains_the_embedding_only_and_tests(self_guidance_config: Callable, tmp_path: Path) -> None:
    config = self_guidance_config()
    main(["fit", "-c", str(config)])
    clusters = KeyedRows.load(tmp_path / "clusters.safetensors", "clusters_file", "clusters")
    assert len(clusters.indices) == 240
    assert set(clusters.tensors) == {"assignments", "modes"}  # no label went into fit
    assert clusters.tensors["assignments"].max() < 4
    assert clusters.provenance["features"].startswith("hspace")
    report = (tmp_path / "clusters.json").read_text()
    assert '"share_Male"' in report
    checkpoint = torch.load(tmp_path / "self_guidance" / "checkpoints" / "last.ckpt", weights_only=True)
    keys = set(checkpoint["state_dict"])
    assert keys == {"cluster_frequencies", "mode_weights"} | {key for key in keys if key.startswith("embedding.")}
    torch.testing.assert_close(
        checkpoint["state_dict"]["cluster_frequencies"], cluster_frequencies(clusters.tensors["assignments"], 4).float()
    )
    torch.testing.assert_close(
        checkpoint["state_dict"]["mode_weights"],
        mode_balanced_weights(clusters.tensors["assignments"], clusters.tensors["modes"], 4).float(),
    )
    assert checkpoint["state_dict"]["embedding.layers.2.weight"].abs().sum() > 0  # it trained
    main(["test", "-c", str(config), "--ckpt_path", str(tmp_path / "self_guidance" / "checkpoints" / "last.ckpt")])
    assert next((tmp_path / "logs" / "self_guidance").glob("version_*/metrics.json")).is_file()


def test_labelled_members_by_hand() -> None:
    assignments = torch.tensor([0, 1, 0, 0, 2, 1, 0])
    torch.testing.assert_close(labelled_members(assignments, 3, None, seed=0), torch.arange(7))
    chosen = labelled_members(assignments, 3, 2, seed=0)
    assert torch.equal(torch.bincount(assignments[chosen], minlength=3), torch.tensor([2, 2, 1]))
    assert torch.equal(chosen, torch.sort(chosen).values)
    assert torch.equal(chosen, labelled_members(assignments, 3, 2, seed=0))


def test_target_draws_reuse_a_label_free_fit(
    self_guidance_config: Callable, tiny_classifier: Path, tmp_path: Path, cli_error: Callable
) -> None:
    config = self_guidance_config()
    main(["fit", "-c", str(config)])
    checkpoint = str(tmp_path / "self_guidance" / "checkpoints" / "last.ckpt")
    target = [
        "--model.init_args.cluster_distribution=target",
        f"--model.init_args.classifier={tiny_classifier}",
        "--model.init_args.target_distributions={Male: [0.3, 0.7]}",
    ]
    cli = build_cli(["-c", str(config), *target], run=False)
    cli.trainer.test(cli.model, cli.datamodule, ckpt_path=checkpoint, verbose=False)
    weights = cli.model.draw_weights()
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    (composition,) = cli.model.cluster_compositions(["Male"])
    reached = composition.T @ weights
    shares = composition[:, 1]  # P(Male) of each cluster's members
    expected = min(max(0.7, float(shares.min())), float(shares.max()))  # the target, or the nearest reachable share
    assert abs(float(reached[1]) - expected) < 1e-3
    clusters = KeyedRows.load(tmp_path / "clusters.safetensors", "clusters_file", "clusters")
    KeyedRows(
        clusters.indices, {"assignments": torch.zeros_like(clusters.tensors["assignments"])}, clusters.provenance
    ).save(tmp_path / "clusters.safetensors")
    line = cli_error(["test", "-c", str(config), *target, "--ckpt_path", checkpoint])
    assert "holds other clusters than the embedding was trained on" in line


def test_modes_draw_samples_from_the_fit_and_an_older_checkpoint_serves_the_others(
    self_guidance_config: Callable, tmp_path: Path, cli_error: Callable
) -> None:
    config = self_guidance_config()
    main(["fit", "-c", str(config)])
    checkpoint = tmp_path / "self_guidance" / "checkpoints" / "last.ckpt"
    modes = ["--model.init_args.cluster_distribution=modes"]
    cli = build_cli(["-c", str(config), *modes], run=False)
    cli.trainer.test(cli.model, cli.datamodule, ckpt_path=str(checkpoint), verbose=False)
    stored = torch.load(checkpoint, weights_only=True)
    torch.testing.assert_close(cli.model.draw_weights(), stored["state_dict"]["mode_weights"].double())
    del stored["state_dict"]["mode_weights"]  # a fit from before the modes draw
    older = tmp_path / "older.ckpt"
    torch.save(stored, older)
    main(["test", "-c", str(config), "--ckpt_path", str(older)])
    line = cli_error(["test", "-c", str(config), *modes, "--ckpt_path", str(older)])
    assert "has no mode weights (its fit predates cluster_distribution='modes')" in line


def test_clusters_file_of_other_features_is_refused(
    self_guidance_config: Callable, tmp_path: Path, cli_error: Callable
) -> None:
    main(["fit", "-c", str(self_guidance_config(name="first"))])
    line = cli_error(["fit", "-c", str(self_guidance_config(name="second", model={"feature_timestep": 300}))])
    assert "Option 'clusters_file'" in line
    assert "holds clusters of features 'hspace(t=500, seed=0)', not 'hspace(t=300, seed=0)'" in line


def test_lora_adapters_train_with_the_embedding_and_only_they_are_checkpointed(
    self_guidance_config: Callable, tmp_path: Path
) -> None:
    config = self_guidance_config(model={"lora_rank": 2, "lora_target_modules": ["conv1", "conv2"]})
    main(["fit", "-c", str(config)])
    state = torch.load(tmp_path / "self_guidance" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    unet_keys = {key for key in state if key.startswith("backbone.")}
    assert unet_keys
    assert all(".lora_A." in key or ".lora_B." in key for key in unet_keys)
    assert any(state[key].abs().sum() > 0 for key in unet_keys if ".lora_B." in key)  # B starts at zero: it trained
    cli = build_cli(["-c", str(config)], run=False)
    last = tmp_path / "self_guidance" / "checkpoints" / "last.ckpt"
    cli.trainer.test(cli.model, cli.datamodule, ckpt_path=str(last), verbose=False)
    loaded = cli.model.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_lora_on_layers_the_unet_lacks_is_one_clear_error(tiny_backbone: Path) -> None:
    with pytest.raises(
        ValueError, match=r"Option 'lora_target_modules': \['qkv'\] name no layer of the backbone's UNet"
    ):
        SelfGuidance(str(tiny_backbone), lora_rank=2, lora_target_modules=["to_q", "qkv"])


def test_fit_calibrates_the_cfg_scale_toward_the_target(
    self_guidance_config: Callable, tiny_classifier: Path, tmp_path: Path
) -> None:
    calibration = {
        "classifier": tiny_classifier,
        "target_distributions": {"Male": [0.5, 0.5]},
        "calibration_scales": [1.0, 3.0],
        "calibration_samples": 4,
    }
    config = self_guidance_config(model=calibration)
    main(["fit", "-c", str(config)])
    [run] = (tmp_path / "logs" / "self_guidance").glob("version_*")
    with (run / "cfg_scale_curve.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    scales = [float(row["cfg_scale"]) for row in rows]
    fd, fid = ([float(row[name]) for row in rows] for name in ("FD to target", "fid_cls"))
    chosen, _ = choose_scale(scales, fd, fid, fd_tolerance([torch.tensor([0.5, 0.5])], 4))
    assert scales == [1.0, 3.0]
    checkpoint = tmp_path / "self_guidance" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["lightning_fair"]["cfg_scale"] == chosen
    assert SelfGuidance.load_from_checkpoint(checkpoint).sampler.config.cfg_scale == chosen
