"""The lightning-fair command line: every config parses; fit then test runs in-process."""

from __future__ import annotations

import csv
import runpy
import sys
from pathlib import Path

import pytest
import torch
import yaml
from config_files import (
    RUN_CONFIGS,
    SETUPS,
    pair_id,
    read,
    representative_pairs,
    run_config,
    run_name,
    setup_path,
    tuned_pairs,
)
from torch.utils.data import DataLoader

from lightning_fair.callbacks import FairnessEvaluator
from lightning_fair.classifiers import load_classifier
from lightning_fair.cli import build_cli
from lightning_fair.data import CelebADataModule
from lightning_fair.main import main

REPO_ROOT = Path(__file__).resolve().parents[1]

CALLBACK_FRAGMENTS = sorted((REPO_ROOT / "callbacks").glob("*.yaml"))
FAST_PAIRS = representative_pairs()
SLOW_PAIRS = [pair for pair in tuned_pairs() if pair not in FAST_PAIRS]


def synthetic_faces_config(name: str) -> list[str]:
    """The ``-c`` options of run ``name`` on the synthetic_faces setup (the one place that knows where configs live)."""
    return ["-c", str(setup_path("synthetic_faces")), "-c", str(run_config(name))]


@pytest.mark.parametrize(
    "pair",
    [*FAST_PAIRS, *(pytest.param(pair, marks=pytest.mark.slow) for pair in SLOW_PAIRS)],
    ids=pair_id,
)
def test_config_parses(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    setup, config = pair
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(setup), "-c", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("lightning_fair.")
    assert printed["name"] == run_name(config)


def test_every_method_setting_names_a_config() -> None:
    """A setup's method_settings keys are the names of method or training configs (a misspelt one would be ignored)."""
    names = {run_name(path) for path in RUN_CONFIGS}
    for setup in SETUPS:
        unknown = set(read(setup).get("method_settings") or {}) - names
        assert not unknown, (
            f"{setup.name} tunes {sorted(unknown)}, which no config of configs/methods or configs/training names"
        )


def test_setup_settings_come_after_the_method_and_before_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """synthetic_faces tunes guidance_scale 100 over the method's null; the command line still wins."""
    arguments = ["fit", *synthetic_faces_config("distribution_guidance"), "--print_config"]
    for extra, expected in (([], 100.0), (["--model.init_args.guidance_scale=7"], 7.0)):
        with pytest.raises(SystemExit):
            main([*arguments, *extra])
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["init_args"]["guidance_scale"] == expected
        assert printed["trainer"]["max_epochs"] == 3  # the setup's, over the method config's 5
        assert printed["trainer"]["default_root_dir"] == "logs/synthetic_faces/distribution_guidance"


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
    assert "${model.init_args.target" not in run_config(config).read_text()
    cli = build_cli([*synthetic_faces_config(config), *overrides], run=False)
    [evaluator] = [c for c in cli.trainer.callbacks if isinstance(c, FairnessEvaluator)]
    assert evaluator.targets_for(cli.model) == expected


def test_the_evaluator_is_set_from_the_command_line(tiny_classifier: Path) -> None:
    """The setup's ``evaluator`` follows ``--classifier``; one option reaches it, a fragment or null replaces it."""
    plain = synthetic_faces_config("plain")
    cli = build_cli([*plain, f"--classifier={tiny_classifier}", "--evaluator.init_args.target=null"], run=False)
    [evaluator] = [c for c in cli.trainer.callbacks if isinstance(c, FairnessEvaluator)]
    assert (evaluator.classifier_reference, evaluator.sensitive, evaluator.target) == (
        str(tiny_classifier),
        "Male",
        None,
    )
    fragment = str(REPO_ROOT / "callbacks" / "fairness_evaluator.yaml")
    cli = build_cli([*plain, f"--evaluator={fragment}"], run=False)
    [evaluator] = [c for c in cli.trainer.callbacks if isinstance(c, FairnessEvaluator)]
    assert evaluator.classifier_reference == "synthetic_faces_classifier"
    cli = build_cli([*plain, "--evaluator=null"], run=False)
    assert not any(isinstance(c, FairnessEvaluator) for c in cli.trainer.callbacks)


@pytest.mark.parametrize("fragment", CALLBACK_FRAGMENTS, ids=lambda path: path.name)
def test_callback_fragment_appends(fragment: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *synthetic_faces_config("classifier"), f"--trainer.callbacks+={fragment}", "--print_config"])
    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    class_path = next(line for line in fragment.read_text().splitlines() if line.startswith("class_path:"))
    assert class_path.split(":", 1)[1].strip() in output
    assert "ModelCheckpoint" in output  # the config's own callbacks are kept


def test_module_entry_point(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m lightning_fair --help`` lists every subcommand."""
    monkeypatch.setattr(sys, "argv", ["lightning_fair", "--help"])
    runpy.run_module("lightning_fair", run_name="__main__")
    assert "{fit,validate,test,predict,report}" in capsys.readouterr().out


def test_classifier_fit_then_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = synthetic_faces_config("classifier")
    tiny = [
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        "--model.init_args.model_name=test_resnet",
        f"--dataset.init_args.root={tmp_path / 'faces'}",
        "--dataset.init_args.synthetic.init_args.num_images=200",
        "--dataset.init_args.batch_size=32",
        "--dataset.init_args.num_workers=0",
    ]
    main(["fit", *config, *tiny])
    checkpoint = tmp_path / "logs/synthetic_faces/classifier/checkpoints/best.ckpt"
    assert checkpoint.is_file()
    assert (tmp_path / "faces" / "synthetic.json").is_file()
    attributes = ["Male", "Blond_Hair", "Eyeglasses", "Smiling"]
    classifier = load_classifier(str(checkpoint))
    assert classifier.attributes == attributes
    main(["test", *config, *tiny, f"--ckpt_path={checkpoint}"])
    with (tmp_path / "logs/synthetic_faces/classifier/version_1/metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # The logged test accuracies are those of the checkpoint's classifier on the test split, computed here.
    data = CelebADataModule(root=str(tmp_path / "faces"), attributes=attributes, sensitive="Male", image_size=32)
    predictions, labels = [], []
    with torch.no_grad():
        for batch in DataLoader(data.dataset("test"), batch_size=64):
            predictions.append(classifier.predict(batch["image"]))
            labels.append(batch["attributes"])
    correct = (torch.cat(predictions) == torch.cat(labels)).float()
    assert len(correct) == len(data.dataset("test")) > 0
    for column, name in enumerate(attributes):
        assert float(rows[-1][f"test/acc_{name}"]) == pytest.approx(correct[:, column].mean().item(), abs=1e-6)
    assert float(rows[-1]["test/acc_mean"]) == pytest.approx(correct.mean().item(), abs=1e-6)
    assert (tmp_path / "logs/synthetic_faces/classifier/version_1/config.yaml").is_file()
