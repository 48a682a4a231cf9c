"""The benchmark scripts run end to end on tiny models and report what the evaluator measured."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

import lightning_fair.callbacks.sampling_timer
from lightning_fair.callbacks import SamplingTimer
from lightning_fair.cli import build_cli
from lightning_fair.report.runs import fit_key

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeClock:
    """``perf_counter`` of timed steps that last the given seconds, in turn (a step reads it at its start and end)."""

    def __init__(self, step_seconds: list[float]) -> None:
        self.step_seconds = list(step_seconds)
        self.readings = 0
        self.now = 0.0

    def perf_counter(self) -> float:
        self.readings += 1
        if self.readings % 2 == 0:  # the end of a step
            self.now += self.step_seconds.pop(0)
        return self.now


def bare_setup(folder: Path) -> Path:
    """A setup that names nothing: the generation configs of these tests are whole runs of their own."""
    path = folder / "bare_setup.yaml"
    path.write_text("seed_everything: 0\n")
    return path


@pytest.mark.parametrize("paired", [True, False])
def test_fairness_benchmark_rows(
    generation_config: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, paired: bool
) -> None:
    fairness = load_script("fairness")
    # Two runs of two batches of 4 each; the first batch of a run is its warm-up, the second is timed and stands for
    # both: plain's runs time 2 s and 1 s (after warm-ups of 10 s), conditional's 3 s and 4 s. Paired, each timed
    # batch of conditional is followed by plain's on the same samples: 1 s and 2 s, ratios 3 and 2.
    steps = [10.0, 2.0, 10.0, 1.0] + ([3.0, 3.0, 1.0, 3.0, 4.0, 2.0] if paired else [3.0, 3.0, 3.0, 4.0])
    clock = FakeClock(steps)
    monkeypatch.setattr(lightning_fair.callbacks.sampling_timer, "time", clock)
    for name in ("plain", "conditional"):  # each method writes its samples into a folder of its own
        (tmp_path / name).mkdir()
    plain = generation_config(tmp_path / "plain", num_samples=6, method="PlainSampling", name="plain")
    conditional = generation_config(
        tmp_path / "conditional", num_samples=6, method="ConditionalSampling", name="conditional"
    )
    out = tmp_path / "results" / "rows.json"
    rows = fairness.main(
        [
            "--methods=conditional",  # plain is added first
            f"--setup={bare_setup(tmp_path)}",
            f"--config=plain={plain}",
            f"--config=conditional={conditional}",
            "--num-samples=8",
            "--steps=2",
            "--batch-size=4",
            "--repeats=2",
            "--accelerator=cpu",
            f"--log-dir={tmp_path / 'logs'}",
            f"--out={out}",
            *([] if paired else ["--no-paired-timing"]),
        ]
    )
    assert [row["method"] for row in rows] == ["plain", "conditional"]
    assert json.loads(out.read_text()) == rows
    for row in rows:
        # The row repeats what the evaluator wrote for that run, with the run's overrides applied.
        written = json.loads((Path(row["log_dir"]) / "metrics.json").read_text())["metrics"]
        assert row["num_samples"] == written["num_samples"] == 8
        assert row["fd"] == written["fd"]
        assert row["fid_cls"] == written["fid_cls"]
        assert row["proportions"] == [written["proportion/Male=0"], written["proportion/Male=1"]]
        assert sum(row["proportions"]) == pytest.approx(1.0)
        assert row["fit_seconds"] == 0.0  # neither method trains anything
        assert row["agreement"] == written.get("agreement/Male")
    assert rows[0]["agreement"] is None  # plain requests no class
    assert 0.0 <= rows[1]["agreement"] <= 1.0
    assert clock.step_seconds == []  # every batch was timed, and nothing else
    assert [row["run_seconds"] for row in rows] == [[4.0, 2.0], [6.0, 8.0]]
    assert [row["seconds"] for row in rows] == [2.0, 6.0]  # the fastest run
    if paired:
        assert [row["pair_ratios"] for row in rows] == [[], [3.0, 2.0]]
        assert [row["time_ratio"] for row in rows] == [1.0, 2.5]  # the median of the pairs' ratios
    else:
        assert [row["paired_ratio"] for row in rows] == [None, None]
        assert [row["time_ratio"] for row in rows] == [1.0, 3.0]  # the fastest runs' seconds over plain's


def test_sampling_timer_times_apart_the_warm_up_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock([9.0, 2.0, 1.0])
    monkeypatch.setattr(lightning_fair.callbacks.sampling_timer, "time", clock)
    module = torch.nn.Linear(1, 1)
    module.device = torch.device("cpu")
    timer = SamplingTimer(warmup_batches=1)
    timer.on_test_start(None, module)
    for size in (4, 4, 2):  # 10 samples: 3 s for the 6 after the warm-up, so 5 s for all 10
        timer.on_test_batch_start(None, module, {"index": torch.arange(size)}, 0)
        timer.on_test_batch_end(None, module, None, {"index": torch.arange(size)}, 0)
    assert (timer.warmup_seconds, timer.timed_seconds, timer.timed_samples) == (9.0, 3.0, 6)
    assert timer.seconds == pytest.approx(5.0)
    assert timer.paired_ratio is None  # no reference
    single = SamplingTimer(warmup_batches=1)
    monkeypatch.setattr(lightning_fair.callbacks.sampling_timer, "time", FakeClock([7.0]))
    single.on_test_start(None, module)
    single.on_test_batch_start(None, module, {"index": torch.arange(3)}, 0)
    single.on_test_batch_end(None, module, None, {"index": torch.arange(3)}, 0)
    assert single.seconds == 7.0  # a run of one batch is timed whole


class Reference(torch.nn.Module):
    """A reference method that records the samples it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[list[int]] = []

    def sample(self, indices: torch.Tensor) -> None:
        self.requests.append(indices.tolist())


def test_sampling_timer_pairs_each_timed_batch_with_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    # warm-up 9 s; then batches of 2, 3 and 2 s, each followed by the reference's 1, 1 and 2 s on the same samples
    monkeypatch.setattr(lightning_fair.callbacks.sampling_timer, "time", FakeClock([9.0, 2.0, 1.0, 3.0, 1.0, 2.0, 2.0]))
    module = torch.nn.Linear(1, 1)
    module.device = torch.device("cpu")
    reference = Reference()
    timer = SamplingTimer(warmup_batches=1, reference=reference)
    timer.on_test_start(None, module)
    for start in (0, 2, 4, 6):
        batch = {"index": torch.arange(start, start + 2)}
        timer.on_test_batch_start(None, module, batch, 0)
        timer.on_test_batch_end(None, module, None, batch, 0)
    assert reference.requests == [[2, 3], [4, 5], [6, 7]]  # the timed batches' samples, not the warm-up's
    assert timer.pair_ratios == [2.0, 3.0, 1.0]
    assert timer.paired_ratio == 2.0  # their median
    assert timer.timed_seconds == 7.0  # the reference's seconds are not the run's
    timer.on_test_start(None, module)
    assert timer.pair_ratios == []  # a new run starts new sums


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--methods=unknown_method"], "No config for method 'unknown_method'"),
        (["--ckpt=conditional"], "--ckpt expects METHOD=PATH"),
        (["--ckpt=other=x.ckpt"], "not in --methods: \\['other'\\]"),
        (["--override=other=--seed_everything=1"], "--override expects METHOD=ARG with METHOD in --methods"),
        (["--repeats=0"], "--repeats must be at least 1, got 0"),
    ],
)
def test_fairness_benchmark_bad_options(arguments: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        load_script("fairness").main(arguments)


def test_fairness_benchmark_fits_a_method_that_needs_it(
    generation_config: Callable[..., Path], tiny_classifier: Path, faces_root: Path, tmp_path: Path
) -> None:
    fairness = load_script("fairness")
    for name in ("plain", "guided"):  # each method writes its samples into a folder of its own
        (tmp_path / name).mkdir()
    plain = generation_config(tmp_path / "plain", num_samples=4, method="PlainSampling", name="plain")
    guided = generation_config(tmp_path / "guided", num_samples=4, method="DistributionGuidance", name="guided")
    text = guided.read_text()
    model_options = f"    classifier: {tiny_classifier}\n    target_distributions: {{Male: [0.3, 0.7]}}\n"
    text = text.replace("    sampler:", model_options + "    sampler:")
    text = text.replace(
        "batch_size: 4}",
        f"batch_size: 4, train_data: {{class_path: CelebADataModule, init_args: {{root: {faces_root}, "
        "attributes: [Male], sensitive: Male, image_size: 32, batch_size: 8}}}",
    )
    text = text.replace("  accelerator: cpu", "  accelerator: cpu\n  max_steps: 2\n  limit_val_batches: 1")
    guided.write_text(text)
    arguments = [
        "--methods=plain,guided",
        f"--setup={bare_setup(tmp_path)}",
        f"--config=plain={plain}",
        f"--config=guided={guided}",
        "--override=guided=--model.init_args.guidance_scale=7.5",
        "--num-samples=4",
        "--steps=2",
        "--accelerator=cpu",
        f"--log-dir={tmp_path / 'logs'}",
    ]
    rows = fairness.main(arguments)
    assert rows[0]["fit_seconds"] == 0.0
    assert rows[1]["fit_seconds"] > 0
    fitted = Path(rows[1]["checkpoint"])  # in the benchmark's folder, not the config's
    assert fitted.is_file()
    assert fitted.is_relative_to((tmp_path / "logs" / "bare_setup" / "guided").resolve())
    assert fitted.parent.name.startswith("fit-")
    assert rows[1]["fit"] == "fitted"
    again = fairness.main(arguments)  # the same fit: reused, and the same numbers
    assert again[1]["fit"] == "reused"
    assert again[1]["fit_seconds"] == 0.0
    assert again[1]["checkpoint"] == rows[1]["checkpoint"]
    assert again[1]["fd"] == rows[1]["fd"]
    for finished in fitted.parent.glob("fitted.*"):  # as if killed after its last checkpoint: resumed from it
        finished.unlink()
    resumed = fairness.main(arguments)
    assert resumed[1]["fit"] == "fitted"
    assert resumed[1]["fd"] == rows[1]["fd"]
    assert rows[1]["num_samples"] == 4
    assert "guidance_scale: 7.5" in (Path(rows[1]["log_dir"]) / "config.yaml").read_text()


def test_the_fit_key_follows_what_a_fit_depends_on(generation_config: Callable[..., Path], tmp_path: Path) -> None:
    config = generation_config(tmp_path, num_samples=4, method="PlainSampling", name="plain")

    def key(*arguments: str) -> str:
        return fit_key(build_cli(["-c", str(config), *arguments], run=False))

    reference = key()
    assert key("--data.init_args.num_samples=99", "--trainer.enable_progress_bar=false") == reference
    assert key("--model.init_args.seed=1") != reference
    assert key("--trainer.max_steps=7") != reference


def test_cluster_draws_benchmark_reports_every_draw_per_k(tiny_setup: Callable[..., Path], tmp_path: Path) -> None:
    cluster_draws = load_script("cluster_draws")
    out = tmp_path / "draws.json"
    result = cluster_draws.main([f"--setup={tiny_setup()}", "--clusters=2,4", f"--out={out}"])
    assert [(row["K"], row["draw"]) for row in result["draws"]] == [
        (k, draw) for k in (2, 4) for draw in ("data", "uniform", "modes")
    ]
    data_rows = [row for row in result["draws"] if row["draw"] == "data"]
    assert data_rows[0]["P(Male)"] == pytest.approx(data_rows[1]["P(Male)"])  # the data's share, whatever K
    for row in result["draws"]:
        assert row["FD"] == pytest.approx(2**0.5 * abs(row["P(Male)"] - 0.5))
    assert json.loads(out.read_text())["features"].startswith("hspace")
