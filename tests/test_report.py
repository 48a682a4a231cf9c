"""``lightning-fair report``: the rows of the benchmark, a report folder with its pictures, cached fits."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from lightning_fair.main import main
from lightning_fair.report.command import planned_runs, report_parser, run_report

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_FITS = ["distribution_guidance", "h_sample_guidance", "attribute_switching", "self_guidance"]
SHIPPED_REPORT = ["-c", "configs/report/synthetic_faces.yaml"]  # the shipped report's options, from the repository


def test_report_writes_rows_pictures_and_pages(
    generation_config: Callable[..., Path], tmp_path: Path, cli_error: Callable
) -> None:
    for name in ("plain", "conditional"):
        (tmp_path / name).mkdir()
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "plain.yaml").write_text(
        generation_config(tmp_path / "plain", num_samples=4, method="PlainSampling", name="plain").read_text()
    )
    (configs / "conditional.yaml").write_text(
        generation_config(tmp_path / "conditional", num_samples=4, name="conditional").read_text()
    )
    settings = tmp_path / "report.yaml"
    settings.write_text(
        f"configs_dir: {configs}\nprotocol: {{num_samples: 4, steps: 2, seed: 0, accelerator: cpu}}\n"
        f"log_dir: {tmp_path / 'logs'}\noutput: {tmp_path / 'report'}\n"
    )
    main(["report", "-c", str(settings)])
    report = tmp_path / "report"
    rows = json.loads((report / "results.json").read_text())
    assert [row["method"] for row in rows] == ["plain", "conditional"]  # every registered method with a config
    for row in rows:
        written = json.loads((Path(row["log_dir"]) / "metrics.json").read_text())["metrics"]
        assert row["fd"] == written["fd"]
        assert (
            report
            / f"{row['method']}_samples_{'PlainSampling' if row['method'] == 'plain' else 'ConditionalSampling'}.png"
        ).is_file()
    for picture in ("proportions.png", "fairness_quality.png"):
        assert (report / picture).read_bytes()[:4] == b"\x89PNG"
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5  # two summaries, the side-by-side and one grid per method
    markdown = (report / "report.md").read_text()
    assert "| conditional |" in markdown
    assert "trainable parameters" in markdown
    assert "![side by side](side_by_side.png)" in markdown
    assert [row["trainable_parameters"] for row in rows] == [0, 0]
    assert all(row["fit"] == "none" for row in rows)
    line = cli_error(["report", "-c", str(settings), "--methods=[plain,unknown]"])
    assert "no config for 'unknown'" in line
    line = cli_error(["report", "-c", str(settings), "--protocol.repeats=0"])
    assert line == "error: Option 'protocol.repeats' must be at least 1, got 0"


def test_report_rows_equal_the_benchmark_rows(generation_config: Callable[..., Path], tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    for name, method in (("plain", "PlainSampling"), ("conditional", "ConditionalSampling")):
        (tmp_path / name).mkdir()
        config = generation_config(tmp_path / name, num_samples=4, method=method, name=name)
        (configs / f"{name}.yaml").write_text(config.read_text())
    protocol = ["--protocol.num_samples=4", "--protocol.steps=2", "--protocol.accelerator=cpu"]
    rows = run_report(
        [f"--configs_dir={configs}", *protocol, f"--log_dir={tmp_path / 'a'}", f"--output={tmp_path / 'r'}"]
    )
    spec = importlib.util.spec_from_file_location("fairness", REPO_ROOT / "benchmarks" / "fairness.py")
    fairness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fairness)
    benchmark = fairness.main(
        [
            "--methods=conditional",
            f"--config=plain={configs / 'plain.yaml'}",
            f"--config=conditional={configs / 'conditional.yaml'}",
            "--num-samples=4",
            "--steps=2",
            "--accelerator=cpu",
            f"--log-dir={tmp_path / 'b'}",
        ]
    )
    keys = ("fd", "fd_l1", "fd_kl", "proportions", "dp_gap", "fid_cls", "kid_cls", "agreement", "bias_score")
    for ours, theirs in zip(rows, benchmark, strict=True):
        assert {key: ours[key] for key in keys} == {key: theirs[key] for key in keys}


def test_shipped_report_config_runs_every_method_with_a_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)  # its paths are relative to the repository, as the README runs it
    options = report_parser().parse_args(["-c", "configs/report/synthetic_faces.yaml"])
    names = [run.name for run in planned_runs(options)]
    assert names[0] == "plain"
    assert {"conditional", "distribution_guidance", "attribute_switching", "self_guidance"} <= set(names)
    assert options.protocol.condition_draw == "balanced"
    assert set(options.checkpoints) == set(SHIPPED_FITS)  # `make report` fits nothing: it tests the shipped fits
    subset = report_parser().parse_args(["-c", "configs/report/synthetic_faces.yaml", "--methods=[conditional]"])
    assert [run.name for run in planned_runs(subset)] == ["plain", "conditional"]  # the other rows' fits: unused
    misspelt = report_parser().parse_args(["-c", "configs/report/synthetic_faces.yaml", "--checkpoints={slef: x}"])
    with pytest.raises(ValueError, match=r"nor configs of 'configs/synthetic_faces': \['slef'\]"):
        planned_runs(misspelt)


@pytest.mark.parametrize("method", SHIPPED_FITS)
def test_shipped_fits_load_into_the_shipped_configs(
    method: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each shipped fit matches its method's config (the modules a checkpoint holds are checked when it loads)."""
    monkeypatch.chdir(REPO_ROOT)
    rows = run_report(
        [
            *SHIPPED_REPORT,
            f"--methods=[{method}]",  # plain, then the method: its own shipped fit, and no other
            "--protocol.num_samples=2",
            "--protocol.steps=25",  # the steps the ADPs were fitted for
            "--evaluator.reference=null",
            "--comparison_samples=0",
            f"--log_dir={tmp_path / 'logs'}",
            f"--output={tmp_path / 'report'}",
        ]
    )
    assert [(row["method"], row["fit"]) for row in rows] == [("plain", "none"), (method, "given")]
    folder = REPO_ROOT / "lightning_fair" / "models" / "synthetic_faces_fits" / method
    assert Path(rows[1]["fit_folder"]).resolve() == folder.resolve()
    assert Path(rows[1]["checkpoint"]).resolve() == (folder / "fitted.ckpt").resolve()


def write_config(path: Path, logs: Path, model: str, calibration_samples: int = 3) -> None:
    """A sampling config with a sample grid and no evaluator (the report gives one)."""
    path.write_text(
        textwrap.dedent(
            f"""
            seed_everything: 0
            trainer:
              accelerator: cpu
              max_epochs: 1  # a calibration (no optimizer step) ends with its epoch
              enable_model_summary: false
              logger: {{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {logs}, name: x}}}}
              callbacks: [{{class_path: SampleGrid, init_args: {{num_images: 2, nrow: 2}}}}]
            data:
              class_path: GenerationRequests
              init_args: {{num_samples: 4, batch_size: 4, calibration_samples: {calibration_samples}}}
            model: {model}
            """
        )
    )


def test_report_shares_one_evaluator_and_backbone(tmp_path: Path, tiny_backbone: Path, tiny_classifier: Path) -> None:
    """The report's evaluator stands in for each config's, its target over the method's; its backbone too."""
    configs = tmp_path / "configs"
    configs.mkdir()
    for name, method in (("plain", "PlainSampling"), ("conditional", "ConditionalSampling")):
        model = f"{{class_path: {method}, init_args: {{backbone: {tmp_path / 'missing'}}}}}"
        write_config(configs / f"{name}.yaml", tmp_path, model)
    settings = tmp_path / "report.yaml"
    settings.write_text(
        f"configs_dir: {configs}\nprotocol: {{num_samples: 4, steps: 2, seed: 0, accelerator: cpu}}\n"
        f"backbone: {tiny_backbone}\ncomparison_samples: 2\n"
        f"evaluator:\n  class_path: FairnessEvaluator\n  init_args:\n    classifier: {tiny_classifier}\n"
        f"    sensitive: Male\n    target_distribution: [0.25, 0.75]\n"
        f"log_dir: {tmp_path / 'logs'}\noutput: {tmp_path / 'report'}\n"
    )
    with pytest.warns(UserWarning, match=r"against target_distribution \[0.25, 0.75\]; ConditionalSampling aims for"):
        rows = run_report(["-c", str(settings)])
    assert [row["target_distribution"] for row in rows] == [[0.25, 0.75]] * 2
    assert all(row["fid_cls"] is None for row in rows)  # the shared evaluator has no reference
    assert f'"classifier": "{tiny_classifier}"' in (tmp_path / "report" / "report.md").read_text()


def test_report_tests_a_given_fit_folder_with_its_diagnostics(
    tmp_path: Path, tiny_backbone: Path, tiny_classifier: Path
) -> None:
    """A fit the report made is a folder (checkpoint and diagnostics) that a later report can be given."""
    configs = tmp_path / "configs"
    configs.mkdir()
    write_config(
        configs / "plain.yaml", tmp_path, f"{{class_path: PlainSampling, init_args: {{backbone: {tiny_backbone}}}}}"
    )
    switching = f"{{class_path: AttributeSwitching, init_args: {{backbone: {tiny_backbone}, search_steps: 4}}}}"
    write_config(configs / "attribute_switching.yaml", tmp_path, switching)
    common = [
        f"--configs_dir={configs}",
        "--protocol.num_samples=4",
        "--protocol.steps=2",
        "--protocol.accelerator=cpu",
        "--evaluator=FairnessEvaluator",
        f"--evaluator.classifier={tiny_classifier}",
        "--evaluator.sensitive=Male",
        f"--log_dir={tmp_path / 'logs'}",
    ]
    fitted = run_report([*common, f"--output={tmp_path / 'first'}"])
    assert fitted[1]["fit"] == "fitted"
    folder = Path(fitted[1]["fit_folder"])
    assert {"fitted.ckpt", "fitted.json", "tau_curve.png", "tau_curve.csv"} <= {path.name for path in folder.iterdir()}
    given = run_report([*common, f"--output={tmp_path / 'second'}", f"--checkpoints={{attribute_switching: {folder}}}"])
    assert given[1]["fit"] == "given"
    assert given[1]["fd"] == fitted[1]["fd"]
    assert (tmp_path / "second" / "attribute_switching_tau_curve.png").is_file()
    page = (tmp_path / "second" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 + 1 + 2 + 1  # summaries, side-by-side, grids, tau curve
