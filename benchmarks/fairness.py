r"""Fairness benchmark: every listed method on the same requests, classifier and metrics, in one run.

Each method runs from its config ``configs/<dataset>/<method>.yaml`` (or one given with ``--config``, under any
label) with the run's sample count, step count and seed, plus its ``--override`` arguments. A method that needs
``fit`` (it trains a module or calibrates) takes its checkpoint from ``--ckpt METHOD=PATH`` or is fitted first
with its config. ``plain`` always runs: the ``time_ratio`` of every row is its sampling time over plain's in the
same run.

Run from the repository root (the configs' data folders are relative to it)::

    python benchmarks/fairness.py --dataset synthetic_faces --methods plain,conditional \
        --num-samples 512 --steps 25 --seed 0 --out results.json

Prints a Markdown table and writes a JSON list of rows with ``method``, ``fd``, ``fd_l1``, ``fd_kl``,
``proportions`` (of the sensitive attribute), ``fd_by_attribute`` (with the evaluator's ``extra_targets``),
``dp_gap``, ``bias_score`` (InvDiff's, over all samples), ``bias_score_by_condition`` (its mean and per-class
values within the classes a method requested, per conditioning attribute: InvDiff's per-prompt score), ``fid_cls``,
``kid_cls``, ``confident``, ``agreement`` (of the sensitive attribute with the class the method requested, where it
requests one), ``seconds`` (time spent generating, evaluation excluded; the
fastest of ``--repeats`` runs), ``run_seconds`` (every run), ``time_ratio``, ``fit_seconds``, ``checkpoint`` (the
given one, or the one the benchmark fitted into ``<log-dir>/<dataset>/<method>/checkpoints``: a benchmark never
writes into the config's own checkpoint folder).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from lightning.pytorch import LightningModule

from lightning_fair.callbacks import FairnessEvaluator
from lightning_fair.cli import build_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_METHOD = "plain"


def parse_pairs(pairs: list[str], option: str) -> dict[str, str]:
    """``["a=x", "b=y"]`` as ``{"a": "x", "b": "y"}``; a malformed pair is an error naming ``option``."""
    parsed = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name or not value:
            raise SystemExit(f"{option} expects METHOD=PATH, got {pair!r}")
        parsed[name] = value
    return parsed


def method_config(dataset: str, method: str, configs: dict[str, str]) -> Path:
    """The config of ``method``: given with ``--config`` or ``configs/<dataset>/<method>.yaml``."""
    path = Path(configs[method]) if method in configs else REPO_ROOT / "configs" / dataset / f"{method}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (REPO_ROOT / "configs" / dataset).glob("*.yaml"))
        raise SystemExit(f"No config for method {method!r} at {path} (configs of {dataset!r}: {available})")
    return path


class SamplingClock:
    """Adds up the time a module's ``test_step`` takes (CUDA work included) by wrapping it."""

    def __init__(self, model: LightningModule) -> None:
        self.seconds = 0.0
        step = model.test_step

        @functools.wraps(step)
        def timed_step(*args: Any, **kwargs: Any) -> Any:
            self._synchronize(model.device)
            start = time.perf_counter()
            output = step(*args, **kwargs)
            self._synchronize(model.device)
            self.seconds += time.perf_counter() - start
            return output

        model.test_step = timed_step

    @staticmethod
    def _synchronize(device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def run_method(
    method: str, config: Path, options: argparse.Namespace, checkpoint: str | None, extra: list[str]
) -> dict[str, Any]:
    """Fits ``method`` if it needs it and has no checkpoint, generates and evaluates; returns its row."""
    overrides = [
        f"--seed_everything={options.seed}",
        f"--model.init_args.seed={options.seed}",
        f"--model.init_args.sampler.num_inference_steps={options.steps}",
        f"--data.init_args.num_samples={options.num_samples}",
        f"--trainer.logger.init_args.save_dir={options.log_dir}",
        f"--trainer.logger.init_args.name={options.dataset}/{method}",
        f"--trainer.accelerator={options.accelerator}",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
    ]
    if options.batch_size:
        overrides.append(f"--data.init_args.batch_size={options.batch_size}")
    overrides += extra
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # the CLI must not see the benchmark's own options
        cli = build_cli(["-c", str(config), *overrides], run=False)
    trainer, model = cli.trainer, cli.model
    evaluators = [callback for callback in trainer.callbacks if isinstance(callback, FairnessEvaluator)]
    if not evaluators:
        raise SystemExit(f"{config} has no FairnessEvaluator callback: nothing to report for {method!r}")
    # A fit goes to the benchmark's own folder, never over the checkpoints of the config's users.
    for callback in trainer.checkpoint_callbacks:
        callback.dirpath = str(Path(options.log_dir, options.dataset, method, "checkpoints").resolve())
    fit_seconds = 0.0
    fitted = None
    if checkpoint is None and getattr(model, "needs_fit", False):
        start = time.perf_counter()
        trainer.fit(model, cli.datamodule)
        fit_seconds = time.perf_counter() - start
        saver = trainer.checkpoint_callback
        fitted = (saver.last_model_path or saver.best_model_path) if saver else None
    clock = SamplingClock(model)
    run_seconds = []
    for _ in range(options.repeats):  # every repeat generates the same images (per-sample seeds)
        clock.seconds = 0.0
        trainer.test(model, cli.datamodule, ckpt_path=checkpoint, verbose=False)
        run_seconds.append(clock.seconds)
    results, evaluator = evaluators[0].results, evaluators[0]
    prefix = f"proportion/{evaluator.sensitive}="
    return {
        "method": method,
        "config": str(config),
        "checkpoint": checkpoint or fitted or None,
        "num_samples": int(results["num_samples"]),
        "steps": options.steps,
        "seed": options.seed,
        "fd": results["fd"],
        "fd_l1": results["fd_l1"],
        "fd_kl": results["fd_kl"],
        "sensitive": evaluator.sensitive,
        "target_distribution": evaluator.target_distribution,
        "proportions": [value for name, value in results.items() if name.startswith(prefix)],
        "fd_by_attribute": {
            evaluator.sensitive: results["fd"],
            **{name: results[f"fd/{name}"] for name in evaluator.extra_targets},
        },
        "bias_score": finite_or_none(results["bias_score"]),
        "bias_score_by_condition": bias_by_condition(results),
        "dp_gap": finite_or_none(results.get("dp_gap")),
        "fid_cls": finite_or_none(results.get("fid_cls")),
        "kid_cls": finite_or_none(results.get("kid_cls")),
        "confident": results[f"confident/{evaluator.sensitive}"],
        "agreement": results.get(f"agreement/{evaluator.sensitive}"),
        "seconds": min(run_seconds),
        "run_seconds": run_seconds,
        "fit_seconds": fit_seconds,
        "log_dir": str(trainer.log_dir),
    }


def bias_by_condition(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """InvDiff's bias score within each requested class, for every attribute a method conditions on."""
    scores: dict[str, dict[str, Any]] = {}
    for name, value in results.items():
        if name.startswith("bias_score_by/"):
            attribute = name.removeprefix("bias_score_by/")
            per_class = {
                key.removeprefix(f"bias_score/{attribute}="): finite_or_none(score)
                for key, score in results.items()
                if key.startswith(f"bias_score/{attribute}=")
            }
            scores[attribute] = {"mean": finite_or_none(value), "per_class": per_class}
    return scores


def finite_or_none(value: float | None) -> float | None:
    """``value``, or ``None`` where it is missing or not a number (undefined metrics are ``null`` in JSON)."""
    return None if value is None or not math.isfinite(value) else value


def cell(value: float | None, digits: int) -> str:
    """A table cell: ``value`` with ``digits`` decimals, ``-`` where it is undefined."""
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (with FD per attribute when a method balances several)."""
    sensitive = rows[0]["sensitive"]
    several = any(len(row["fd_by_attribute"]) > 1 for row in rows)
    columns = ["method", "FD", "FD (L1)", f"P({sensitive})", "target", "DP gap", "bias", "bias per condition"]
    header = "| " + " | ".join([*columns, "fid_cls", "confident", "seconds", "time ratio"]) + " |"
    lines = [header + (" FD by attribute |" if several else ""), "|---" * (12 + several) + "|"]
    for row in rows:
        proportions = "/".join(f"{p:.3f}" for p in row["proportions"])
        target = "/".join(f"{p:.2f}" for p in row["target_distribution"])
        by_condition = "; ".join(
            f"{attribute} {cell(scores['mean'], 3)} ("
            + ", ".join(f"{value}: {cell(score, 3)}" for value, score in scores["per_class"].items())
            + ")"
            for attribute, scores in row["bias_score_by_condition"].items()
        )
        line = (
            f"| {row['method']} | {row['fd']:.4f} | {row['fd_l1']:.4f} | {proportions} | {target} | "
            f"{cell(row['dp_gap'], 4)} | {cell(row['bias_score'], 3)} | {by_condition or '-'} | "
            f"{cell(row['fid_cls'], 2)} | {row['confident']:.3f} | {row['seconds']:.1f} | {row['time_ratio']:.3f} |"
        )
        if several:
            line += " " + ", ".join(f"{name} {fd:.4f}" for name, fd in row["fd_by_attribute"].items()) + " |"
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic_faces", help="folder of configs/ holding the method configs")
    parser.add_argument("--methods", default="plain", help="comma-separated method names (plain always runs)")
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--steps", type=int, default=25, help="denoising steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the config's)")
    parser.add_argument("--repeats", type=int, default=1, help="generation runs per method; `seconds` is the fastest")
    parser.add_argument("--ckpt", action="append", default=[], metavar="METHOD=PATH", help="checkpoint of a method")
    parser.add_argument("--config", action="append", default=[], metavar="METHOD=PATH", help="config of a method")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="METHOD=ARG",
        help="a command-line argument for one method, e.g. 'dg=--model.init_args.guidance_scale=50' (repeatable)",
    )
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator (cpu, gpu, auto)")
    parser.add_argument("--log-dir", default="logs/benchmarks", help="where each method's run folder goes")
    parser.add_argument("--out", default=None, help="JSON file for the rows")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs every method, prints the table, writes the JSON; returns the rows."""
    options = parse_args(argv)
    if options.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {options.repeats}")
    methods = [name for name in options.methods.split(",") if name]
    methods = [REFERENCE_METHOD] + [name for name in dict.fromkeys(methods) if name != REFERENCE_METHOD]
    checkpoints = parse_pairs(options.ckpt, "--ckpt")
    configs = parse_pairs(options.config, "--config")
    extras: dict[str, list[str]] = {method: [] for method in methods}
    for pair in options.override:
        name, _, argument = pair.partition("=")
        if name not in extras or not argument:
            raise SystemExit(f"--override expects METHOD=ARG with METHOD in --methods, got {pair!r}")
        extras[name].append(argument)
    unknown = sorted((set(checkpoints) | set(configs)) - set(methods))
    if unknown:
        raise SystemExit(f"--ckpt/--config name methods that are not in --methods: {unknown}")
    paths = {method: method_config(options.dataset, method, configs) for method in methods}
    rows = [run_method(method, paths[method], options, checkpoints.get(method), extras[method]) for method in methods]
    reference_seconds = rows[0]["seconds"]
    for row in rows:
        row["time_ratio"] = row["seconds"] / reference_seconds
    print(markdown_table(rows))
    if options.out:
        out = Path(options.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary = out.with_name(f".{out.name}.tmp")
        temporary.write_text(json.dumps(rows, indent=2) + "\n")
        temporary.replace(out)
    return rows


if __name__ == "__main__":
    main()
