"""README "Your own model and data": the walkthrough's commands on a dataset in the generic CSV format, tiny."""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lightning_fair.main import main

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUPS = REPO_ROOT / "configs" / "setups"
METHOD_CONFIGS = REPO_ROOT / "configs" / "methods"
TRAINING = REPO_ROOT / "configs" / "training"
METHODS = ["plain", "conditional", "distribution_guidance", "h_sample_guidance", "attribute_switching", "self_guidance"]


def write_striped_dataset(root: Path, count: int = 96, seed: int = 0) -> None:
    """16x16 images with a CSV of its own names: ``pics/<n>.png``, a ``fold`` column, attributes ``stripes``/``big``.

    ``stripes`` (the sensitive attribute) is 1 for three images in four; ``big`` marks a bright square patch.
    """
    rng = np.random.default_rng(seed)
    (root / "pics").mkdir(parents=True)
    rows = []
    for n in range(count):
        stripes, big = int(rng.random() < 0.75), int(rng.random() < 0.5)
        pixels = rng.uniform(0.2, 0.5, size=(16, 16, 3))
        if stripes:
            pixels[::4] = [0.9, 0.1, 0.1]
        if big:
            pixels[4:12, 4:12] = 1.0
        Image.fromarray((pixels * 255).astype(np.uint8)).save(root / "pics" / f"{n}.png")
        rows.append([f"pics/{n}.png", ("tr", "va", "te")[n % 3], stripes, big])
    with (root / "meta.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["path", "fold", "stripes", "big"], *rows])


def setup_file(folder: Path, classifier: str, backbone: str) -> Path:
    """``my_setup.yaml``: the walkthrough's copy of configs/setups/shapes.yaml, naming the striped dataset."""
    setup = yaml.safe_load((SETUPS / "shapes.yaml").read_text())
    setup["dataset"]["init_args"] = {
        "root": "data/striped",
        "csv_file": "meta.csv",
        "image_column": "path",
        "split_column": "fold",
        "split_values": {"train": "tr", "val": "va", "test": "te"},
        "attributes": ["stripes", "big"],
        "sensitive": "stripes",
        "target": "big",
        "image_size": 16,
        "batch_size": 16,
        "num_workers": 0,
    }
    setup["classifier"], setup["backbone"] = classifier, backbone
    path = folder / "my_setup.yaml"
    path.write_text(yaml.safe_dump(setup, sort_keys=False))
    return path


@pytest.fixture
def walkthrough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with the striped dataset under data/striped, as the current directory."""
    monkeypatch.chdir(tmp_path)
    write_striped_dataset(tmp_path / "data" / "striped")
    return tmp_path


def test_the_walkthrough_runs_from_a_csv_dataset_to_a_report(walkthrough: Path) -> None:
    classifier, backbone = "runs/classifier/checkpoints/best.ckpt", "runs/pretrain_unet/model"
    setup = str(setup_file(walkthrough, classifier, backbone))
    tiny_classifier = ["--model.init_args.model_name=test_resnet", "--trainer.max_epochs=1"]
    main(["fit", "-c", setup, "-c", str(TRAINING / "classifier.yaml"), *tiny_classifier])
    main(["test", "-c", setup, "-c", str(TRAINING / "classifier.yaml"), *tiny_classifier, f"--ckpt_path={classifier}"])
    tiny_unet = [
        "--model.init_args.block_out_channels=[8, 16]",
        "--model.init_args.norm_num_groups=4",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--backbone_check.init_args.samples_per_class=4",
        "--backbone_check.init_args.steps=2",
    ]
    main(["fit", "-c", setup, "-c", str(TRAINING / "pretrain_unet.yaml"), *tiny_unet])
    assert (walkthrough / backbone / "model_index.json").is_file()
    check = json.loads((walkthrough / backbone / "check.json").read_text())
    assert check["classifier"] == classifier  # the setup's classifier checked the 2-step model
    assert check["samples"] == 8
    assert not check["usable"]
    assert json.loads((walkthrough / backbone / "training.json").read_text())["steps"] == 2

    tiny_fits = {
        "distribution_guidance": ["--trainer.max_epochs=1", "--model.init_args.calibration_scales=[0, 50]"],
        "h_sample_guidance": ["--trainer.max_epochs=1", "--model.init_args.calibration_scales=[0, 5]"],
        "attribute_switching": ["--model.init_args.search_steps=4", "--data.init_args.calibration_samples=4"],
        "self_guidance": [
            "--trainer.max_steps=2",
            "--model.init_args.num_clusters=2",
            "--model.init_args.calibration_scales=[1.0, 2.0]",
        ],
    }
    for name in ("distribution_guidance", "h_sample_guidance", "self_guidance"):
        tiny_fits[name] += ["--model.init_args.calibration_samples=8", "--trainer.limit_val_batches=1"]
    main(
        [
            "report",
            "-c",
            str(REPO_ROOT / "configs" / "report" / "default.yaml"),
            f"--setup={setup}",
            f"--methods_dir={METHOD_CONFIGS}",  # the README runs it from the repository; this test from a folder
            "--protocol={num_samples: 8, steps: 2, seed: 0, accelerator: cpu, condition_draw: balanced}",
            "--comparison_samples=2",
            f"--overrides={json.dumps(tiny_fits)}",
        ]
    )
    rows = json.loads((walkthrough / "runs" / "report" / "results.json").read_text())
    assert [row["method"] for row in rows] == METHODS
    for row in rows:
        record = json.loads((Path(row["log_dir"]) / "metrics.json").read_text())
        assert record["classifier"] == classifier  # the new classifier, not a shipped one
        assert record["sensitive"] == "stripes"
        assert row["num_samples"] == 8
    fitted = {row["method"]: row for row in rows if row["fit"] == "fitted"}
    assert set(fitted) == {"distribution_guidance", "h_sample_guidance", "attribute_switching", "self_guidance"}
    for name, option, scales in (
        ("distribution_guidance", "guidance_scale", [0.0, 50.0]),
        ("h_sample_guidance", "guidance_scale", [0.0, 5.0]),
        ("self_guidance", "cfg_scale", [1.0, 2.0]),
    ):
        with (Path(fitted[name]["fit_folder"]) / f"{option}_curve.csv").open() as handle:
            assert [float(line[option]) for line in csv.DictReader(handle)] == scales  # calibrated in the fit


def test_method_configs_name_only_the_setups_parts(walkthrough: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setup = str(setup_file(walkthrough, "my/classifier.ckpt", "my/unet"))
    for config in [*sorted(METHOD_CONFIGS.glob("*.yaml")), *sorted(TRAINING.glob("*.yaml"))]:
        subcommand = "fit" if config.parent == TRAINING else "test"
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([subcommand, "-c", setup, "-c", str(config), "--print_config"])
        assert exit_info.value.code == 0
        printed = capsys.readouterr().out
        assert "synthetic" not in printed.lower(), config.name
        if config.stem != "distribution_guidance_joint":  # it names its two attributes
            assert "Male" not in printed, config.name
        assert "root: data/striped" in printed, config.name
        if subcommand == "test":
            assert printed.count("my/unet") == 2, config.name  # the top-level backbone and the model's
            assert "classifier: my/classifier.ckpt" in printed, config.name


def test_a_shared_option_the_config_does_not_follow_is_refused(
    tiny_backbone: Path, cli_error: Callable, tmp_path: Path
) -> None:
    own = tmp_path / "own_backbone.yaml"
    own.write_text("name: own\nmodel: {class_path: PlainSampling, init_args: {backbone: synthetic_faces_unet}}\n")
    line = cli_error(
        ["test", "-c", str(SETUPS / "synthetic_faces.yaml"), "-c", str(own), f"--backbone={tiny_backbone}"]
    )
    assert line.startswith(f"error: Option 'backbone' is '{tiny_backbone}' but model.init_args.backbone is ")
    assert "this config does not follow 'backbone'" in line


def test_the_fairness_benchmark_runs_methods_on_a_setup(walkthrough: Path) -> None:
    spec = importlib.util.spec_from_file_location("fairness", REPO_ROOT / "benchmarks" / "fairness.py")
    fairness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fairness)
    assert fairness.method_config("plain", {}) == METHOD_CONFIGS / "plain.yaml"
    assert fairness.method_config("mine", {"mine": str(setup_file(walkthrough, "c", "b"))}).name == "my_setup.yaml"
    with pytest.raises(SystemExit, match="No config for method 'nope'"):
        fairness.method_config("nope", {})
    with pytest.raises(SystemExit, match="--setup: no setup config at missing.yaml"):
        fairness.main(["--setup=missing.yaml"])
