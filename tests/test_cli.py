"""The lightning-fair command line: every config parses; fit then test runs in-process."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from config_files import command_configs

from lightning_fair.callbacks import FairnessEvaluator
from lightning_fair.classifiers import load_classifier
from lightning_fair.cli import build_cli, main

REPO_ROOT = Path(__file__).resolve().parents[1]

CONFIGS = command_configs()
CUSTOM_SETUP = """\
dataset: {class_path: AttributeCSVDataModule, init_args: {root: /data, attributes: [a, b], sensitive: a, target: b}}
classifier: /models/classifier.ckpt
backbone: /models/unet
"""
REAL_DATASETS = {"celeba", "waterbirds"}
CALLBACK_FRAGMENTS = sorted((REPO_ROOT / "callbacks").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: str(path.relative_to(REPO_ROOT / "configs")))
def test_config_parses(config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Configs for real datasets leave `root` to the command line, as their users do; method configs name
    # conventional paths inside the file (their evaluator copies them by interpolation). configs/custom leave
    # the dataset, classifier and backbone to the user's setup file.
    leaves_root = config.parent.name in REAL_DATASETS and "GenerationRequests" not in config.read_text()
    real_data_root = ["--data.init_args.root", "/data"] if leaves_root else []
    if config.parent.name == "custom":
        (tmp_path / "setup.yaml").write_text(CUSTOM_SETUP)
        real_data_root = ["-c", str(tmp_path / "setup.yaml")]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(config), *real_data_root, "--print_config"])
    assert exit_info.value.code == 0
    assert "class_path: lightning_fair." in capsys.readouterr().out


@pytest.mark.parametrize(
    ("config", "overrides", "expected"),
    [
        ("distribution_guidance", ["--model.init_args.target_distributions.Male=[0.3, 0.7]"], ([0.3, 0.7], {})),
        ("distribution_guidance_joint", [], ([0.5, 0.5], {"Eyeglasses": [0.5, 0.5]})),
        ("conditional", ["--model.init_args.target_distribution=[0.2, 0.8]"], ([0.2, 0.8], {})),
        (
            "attribute_switching",
            ["--model.init_args.final_distribution=[0.4, 0.6]", "--model.init_args.tau=500"],
            ([0.4, 0.6], {}),
        ),
        ("plain", [], (None, {})),
    ],
)
def test_evaluator_measures_against_the_method_target(
    config: str, overrides: list[str], expected: tuple[list[float] | None, dict[str, list[float]]]
) -> None:
    """The evaluator takes the target the method declares (after command-line overrides); the config copies none."""
    path = REPO_ROOT / "configs" / "synthetic_faces" / f"{config}.yaml"
    assert "${model.init_args.target" not in path.read_text()
    cli = build_cli(["-c", str(path), *overrides], run=False)
    [evaluator] = [c for c in cli.trainer.callbacks if isinstance(c, FairnessEvaluator)]
    assert evaluator.targets_for(cli.model) == expected


def test_the_evaluator_is_set_from_the_command_line(tiny_classifier: Path) -> None:
    """The top-level ``evaluator``: one option reaches it (``--trainer.callbacks.init_args`` reaches the last one)."""
    path = str(REPO_ROOT / "configs" / "synthetic_faces" / "plain.yaml")
    cli = build_cli(["-c", path, f"--evaluator.classifier={tiny_classifier}", "--evaluator.target=null"], run=False)
    [evaluator] = [c for c in cli.trainer.callbacks if isinstance(c, FairnessEvaluator)]
    assert (evaluator.classifier_reference, evaluator.sensitive, evaluator.target) == (
        str(tiny_classifier),
        "Male",
        None,
    )
    fragment = str(REPO_ROOT / "callbacks" / "fairness_evaluator.yaml")
    cli = build_cli(["-c", path, f"--evaluator={fragment}"], run=False)
    [evaluator] = [c for c in cli.trainer.callbacks if isinstance(c, FairnessEvaluator)]
    assert evaluator.classifier_reference == "synthetic_faces_classifier"
    cli = build_cli(["-c", path, "--evaluator=null"], run=False)
    assert not any(isinstance(c, FairnessEvaluator) for c in cli.trainer.callbacks)


@pytest.mark.parametrize("fragment", CALLBACK_FRAGMENTS, ids=lambda path: path.name)
def test_callback_fragment_appends(fragment: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = REPO_ROOT / "configs" / "synthetic_faces" / "classifier.yaml"
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(config), f"--trainer.callbacks+={fragment}", "--print_config"])
    output = capsys.readouterr().out
    class_path = next(line for line in fragment.read_text().splitlines() if line.startswith("class_path:"))
    assert class_path.split(":", 1)[1].strip() in output
    assert "ModelCheckpoint" in output  # the config's own callbacks are kept


def test_module_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "lightning_fair", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "{fit,validate,test,predict}" in result.stdout


def test_classifier_fit_then_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(REPO_ROOT / "configs" / "synthetic_faces" / "classifier.yaml")
    tiny = [
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        "--model.init_args.model_name=test_resnet",
        f"--data.init_args.root={tmp_path / 'faces'}",
        "--data.init_args.synthetic.init_args.num_images=200",
        "--data.init_args.batch_size=32",
        "--data.init_args.num_workers=0",
    ]
    main(["fit", "-c", config, *tiny])
    checkpoint = tmp_path / "logs/synthetic_faces/classifier/checkpoints/best.ckpt"
    assert checkpoint.is_file()
    assert (tmp_path / "faces" / "synthetic.json").is_file()
    assert load_classifier(str(checkpoint)).attributes == ["Male", "Blond_Hair", "Eyeglasses", "Smiling"]
    main(["test", "-c", config, *tiny, f"--ckpt_path={checkpoint}"])
    with (tmp_path / "logs/synthetic_faces/classifier/version_1/metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for name in ["Male", "Blond_Hair", "Eyeglasses", "Smiling"]:
        accuracy = float(rows[-1][f"test/acc_{name}"])
        assert 0.0 <= accuracy <= 1.0
    assert (tmp_path / "logs/synthetic_faces/classifier/version_1/config.yaml").is_file()
