"""``lightning-fair report``: a setup's methods on one protocol, a report folder with its pictures, cached fits."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lightning_fair.main import main
from lightning_fair.metrics.prompts import across_prompts
from lightning_fair.report.checks import report_checks
from lightning_fair.report.command import planned_runs, report_parser, run_report
from lightning_fair.report.tables import prompt_table

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS = REPO_ROOT / "configs" / "methods"
SHIPPED_FITS = ["distribution_guidance", "h_sample_guidance", "attribute_switching", "self_guidance"]
SHIPPED_REPORT = ["-c", "configs/report/synthetic_faces.yaml"]  # the shipped report's options, from the repository
PROTOCOL = "{num_samples: 4, steps: 2, seed: 0, accelerator: cpu, condition_draw: balanced}"


def test_report_writes_rows_pictures_and_pages(
    tiny_setup: Callable[..., Path], tmp_path: Path, cli_error: Callable
) -> None:
    settings = tmp_path / "report.yaml"
    options = {
        "setup": str(tiny_setup()),
        "methods": ["plain", "conditional"],
        "protocol": yaml.safe_load(PROTOCOL),
        "log_dir": str(tmp_path / "logs"),
        "output": str(tmp_path / "report"),
        "backbone_check": 4,
    }
    settings.write_text(yaml.safe_dump(options))
    main(["report", "-c", str(settings)])
    report = tmp_path / "report"
    rows = json.loads((report / "results.json").read_text())
    assert [row["method"] for row in rows] == ["plain", "conditional"]
    assert {row["setup"] for row in rows} == {options["setup"]}
    for row in rows:
        written = json.loads((Path(row["log_dir"]) / "metrics.json").read_text())["metrics"]
        assert row["fd"] == written["fd"]
        assert Path(row["log_dir"]).is_relative_to(tmp_path / "logs" / "tiny_setup" / row["method"])
        sampler = "PlainSampling" if row["method"] == "plain" else "ConditionalSampling"
        assert (report / f"{row['method']}_samples_{sampler}.png").is_file()
    for picture in ("proportions.png", "fairness_quality.png"):
        assert (report / picture).read_bytes()[:4] == b"\x89PNG"
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5  # two summaries, the side-by-side and one grid per method
    markdown = (report / "report.md").read_text()
    # The random tiny backbone fails its check: every row rests on it, so every row is marked in every table.
    for row in rows:
        (backbone,) = [check for check in row["checks"] if check["name"] == "backbone"]
        assert not backbone["passed"]
        assert "NOT USABLE" in backbone["detail"]
    assert markdown.index("## Checks") < markdown.index("| method |")
    assert "FAILED backbone: backbone" in markdown
    assert markdown.count("| conditional (!) |") == 2
    assert "FAILED backbone" in page
    assert "trainable parameters" in markdown
    assert "![side by side](side_by_side.png)" in markdown
    assert f'"setup": "{options["setup"]}"' in markdown
    assert [row["trainable_parameters"] for row in rows] == [0, 0]
    assert all(row["fit"] == "none" for row in rows)
    line = cli_error(["report", "-c", str(settings), "--strict=true"])  # the check is read back from its cache
    assert line.startswith("error: --strict: ")
    assert "check(s) failed: backbone (plain/conditional)" in line
    line = cli_error(["report", "-c", str(settings), "--methods=[plain,unknown]"])
    assert "no config for 'unknown'" in line
    line = cli_error(["report", "-c", str(settings), "--protocol.repeats=0"])
    assert line == "error: Option 'protocol.repeats' must be at least 1, got 0"
    line = cli_error(["report", "-c", str(settings), f"--setup={tmp_path / 'missing.yaml'}"])
    assert line == f"error: Option 'setup': no setup config at {tmp_path / 'missing.yaml'}"


def test_report_rows_equal_the_command_lines_runs(tiny_setup: Callable[..., Path], tmp_path: Path) -> None:
    """Each row is what ``lightning-fair test -c <setup> -c <method>`` measures with the protocol's options."""
    setup = str(tiny_setup())
    rows = run_report(
        [
            f"--setup={setup}",
            "--methods=[plain, conditional]",
            f"--protocol={PROTOCOL}",
            "--comparison_samples=0",
            f"--log_dir={tmp_path / 'logs'}",
            f"--output={tmp_path / 'report'}",
        ]
    )
    protocol = ["--model.init_args.sampler.num_inference_steps=2", "--model.init_args.sampler.condition_draw=balanced"]
    for row in rows:
        folder = tmp_path / "cli" / row["method"]
        main(
            [
                "test",
                "-c",
                setup,
                "-c",
                str(METHODS / f"{row['method']}.yaml"),
                *protocol,
                f"--trainer.default_root_dir={folder}",
            ]
        )
        written = json.loads(next(folder.rglob("metrics.json")).read_text())["metrics"]
        assert row["num_samples"] == written["num_samples"] == 4
        for key in ("fd", "fd_l1", "fd_kl", "dp_gap", "fid_cls", "kid_cls", "bias_score"):
            assert row[key] == written[key], key
        assert row["proportions"] == pytest.approx([written["proportion/Male=0"], written["proportion/Male=1"]])


def test_shipped_report_config_names_the_setup_and_its_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)  # its paths are relative to the repository, as the README runs it
    options = report_parser().parse_args(SHIPPED_REPORT)
    runs = planned_runs(options)
    assert runs[0].name == "plain"
    assert {"conditional", "distribution_guidance", "attribute_switching", "self_guidance"} <= {
        run.name for run in runs
    }
    assert {run.setup for run in runs} == {Path("configs/setups/synthetic_faces.yaml")}
    assert options.protocol.condition_draw == "balanced"
    assert set(options.checkpoints) == set(SHIPPED_FITS)  # `make report` fits nothing: it tests the shipped fits
    subset = report_parser().parse_args([*SHIPPED_REPORT, "--methods=[conditional]"])
    assert [run.name for run in planned_runs(subset)] == ["plain", "conditional"]  # the other rows' fits: unused
    misspelt = report_parser().parse_args([*SHIPPED_REPORT, "--checkpoints={slef: x}"])
    with pytest.raises(ValueError, match=r"nor configs of 'configs/methods': \['slef'\]"):
        planned_runs(misspelt)


def test_shipped_fits_load_into_the_shipped_configs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each shipped fit matches its method's config (the modules a checkpoint holds are checked when it loads).

    One report tests every shipped fit, each its own (cheaper than a report per fit, which reruns plain each time):
    a fit that does not load into its method's config fails it.
    """
    monkeypatch.chdir(REPO_ROOT)
    light = ["--evaluator.init_args.reference=null"]  # no reference features to compute
    rows = run_report(
        [
            *SHIPPED_REPORT,
            f"--methods=[{', '.join(SHIPPED_FITS)}]",
            "--protocol.num_samples=2",
            "--protocol.steps=25",  # the steps the ADPs were fitted for
            f"--overrides={json.dumps({name: light for name in ['plain', *SHIPPED_FITS]})}",
            "--comparison_samples=0",
            f"--log_dir={tmp_path / 'logs'}",
            f"--output={tmp_path / 'report'}",
        ]
    )
    assert [(row["method"], row["fit"]) for row in rows] == [("plain", "none")] + [
        (method, "given") for method in SHIPPED_FITS
    ]
    shipped = (REPO_ROOT / "lightning_fair" / "models" / "synthetic_faces_fits").resolve()
    for method, row in zip(SHIPPED_FITS, rows[1:], strict=True):
        assert Path(row["fit_folder"]).resolve() == shipped / method
        assert Path(row["checkpoint"]).resolve() == shipped / method / "fitted.ckpt"


def test_the_reports_backbone_replaces_the_setups(
    tiny_setup: Callable[..., Path], tiny_backbone: Path, tmp_path: Path
) -> None:
    """``--backbone`` reaches every row (the setup's is missing); the setup's evaluator target over the method's."""
    setup = str(tiny_setup(backbone=tmp_path / "missing", target_distribution=[0.25, 0.75]))
    arguments = [f"--setup={setup}", "--methods=[plain, conditional]", f"--protocol={PROTOCOL}"]
    arguments += [f"--backbone={tiny_backbone}", "--comparison_samples=2", f"--output={tmp_path / 'report'}"]
    with pytest.warns(UserWarning, match=r"against target_distribution \[0.25, 0.75\]; ConditionalSampling aims for"):
        rows = run_report(arguments)
    assert [row["target_distribution"] for row in rows] == [[0.25, 0.75]] * 2
    settings = (tmp_path / "report" / "report.md").read_text()
    assert f'"backbone": "{tiny_backbone}"' in settings


def test_report_tests_a_given_fit_folder_with_its_diagnostics(tiny_setup: Callable[..., Path], tmp_path: Path) -> None:
    """A fit the report made is a folder (checkpoint and diagnostics) that a later report can be given."""
    common = [
        f"--setup={tiny_setup()}",
        "--methods=[plain, attribute_switching]",
        f"--protocol={PROTOCOL}",
        '--overrides={attribute_switching: ["--data.init_args.calibration_samples=3"]}',
        f"--log_dir={tmp_path / 'logs'}",
    ]
    fitted = run_report([*common, f"--output={tmp_path / 'first'}"])
    assert fitted[1]["fit"] == "fitted"
    folder = Path(fitted[1]["fit_folder"])
    assert {"fitted.ckpt", "fitted.json", "tau_curve.png", "tau_curve.csv"} <= {path.name for path in folder.iterdir()}
    again = run_report([*common, f"--output={tmp_path / 'again'}"])
    assert again[1]["fit"] == "reused"
    given = run_report([*common, f"--output={tmp_path / 'second'}", f"--checkpoints={{attribute_switching: {folder}}}"])
    assert given[1]["fit"] == "given"
    assert given[1]["fd"] == fitted[1]["fd"] == again[1]["fd"]
    assert (tmp_path / "second" / "attribute_switching_tau_curve.png").is_file()
    page = (tmp_path / "second" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 + 1 + 2 + 1  # summaries, side-by-side, grids, tau curve


def test_checks_of_hand_made_rows(tmp_path: Path) -> None:
    fit = tmp_path / "fit"
    fit.mkdir()
    (fit / "guidance_scale_curve.json").write_text(
        json.dumps({"option": "guidance_scale", "chosen": 200, "reached": False})
    )
    base = {
        "fd": 0.1,
        "fid_cls": 1.0,
        "proportions": [0.5, 0.5],
        "agreement": None,
        "confident": 0.9,
        "fit_folder": None,
    }
    rows = [
        {**base, "method": "plain"},
        {**base, "method": "conditional", "agreement": 0.54},  # gain 0.08 over chance 0.5: at chance
        {**base, "method": "distribution_guidance", "fit_folder": str(fit), "fid_cls": None},
    ]
    checks = report_checks(rows, None)
    failed = {(check.name, check.methods) for check in checks if not check.passed}
    assert failed == {
        ("agreement", ("conditional",)),
        ("calibration", ("distribution_guidance",)),
        ("metrics", ("distribution_guidance",)),
    }
    rows[0]["confident"] = 0.4
    rows[1]["agreement"] = 0.56  # gain 0.12
    failed = {(check.name, check.methods) for check in report_checks(rows, None) if not check.passed}
    assert ("classifier", ("plain", "conditional", "distribution_guidance")) in failed
    assert not any(name == "agreement" for name, _ in failed)
    rows[2]["has_reference"] = False  # no reference images: no distance to miss
    failed = {(check.name, check.methods) for check in report_checks(rows, None) if not check.passed}
    assert ("metrics", ("distribution_guidance",)) not in failed


def test_the_per_prompt_table_of_hand_made_rows() -> None:
    def row(method: str, shares: list[float], fds: list[float]) -> dict:
        prompts = ["a photo of a nurse", "a photo of a pilot"]
        per_prompt = [
            {"prompt": prompt, "proportions": [1 - share, share], "fd": fd}
            for prompt, share, fd in zip(prompts, shares, fds, strict=True)
        ]
        summary = across_prompts(
            [_Result({"fd": fd, "proportion/Male=1": share}) for share, fd in zip(shares, fds, strict=True)], prompts
        )
        return {
            "method": method,
            "sensitive": "Male",
            "proportions": [0.5, 0.5],
            "per_prompt": per_prompt,
            "across_prompts": summary,
        }

    table = prompt_table([row("plain", [0.1, 0.9], [0.56, 0.57]), row("conditional", [0.5, 0.4], [0.0, 0.14])])
    lines = table.splitlines()
    assert lines[0] == "| prompt | plain: P(Male=1) / FD | conditional: P(Male=1) / FD |"
    assert lines[2] == "| a photo of a nurse | 0.100 / 0.560 | 0.500 / 0.000 |"
    assert lines[4] == "| **mean** | 0.500 / 0.565 | 0.450 / 0.070 |"
    assert lines[5] == "| **std** | 0.400 / 0.005 | 0.050 / 0.070 |"
    assert lines[6] == "| **worst FD** | 0.570 (a photo of a pilot) | 0.140 (a photo of a pilot) |"
    assert prompt_table([{"method": "plain", "per_prompt": None}]) is None


class _Result:
    def __init__(self, values: dict) -> None:
        self.values = values

    def metrics(self) -> dict:
        return self.values
