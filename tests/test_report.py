"""``lightning-fair report``: the rows of the benchmark, a report folder with its pictures, cached fits."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lightning_fair.cli import main
from lightning_fair.report.command import planned_runs, report_parser, run_report

REPO_ROOT = Path(__file__).resolve().parents[1]


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
    assert page.count("data:image/png;base64,") == 4  # two summaries and one grid per method, inlined
    assert "conditional" in (report / "report.md").read_text()
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
