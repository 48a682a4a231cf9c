"""One method's run under a shared protocol: fit if needed, generate, evaluate, and its row of results."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from lightning_fair.callbacks import FairnessEvaluator
from lightning_fair.cli import build_cli
from lightning_fair.utils.files import write_text_atomically


@dataclass(frozen=True)
class Protocol:
    """What every method of a comparison shares.

    Attributes:
        num_samples: samples generated per method.
        steps: denoising steps.
        seed: seed of the run (each sample's noise and condition depend only on it and the sample's index).
        batch_size: global batch size (``None``: each config's).
        repeats: generation runs per method; ``seconds`` is the fastest.
        accelerator: Lightning accelerator.
        condition_draw: every method's ``sampler.condition_draw`` (``None``: each config's); ``balanced`` gives
            each requested class its exact share, so FD measures the model rather than the draw.
    """

    num_samples: int = 512
    steps: int = 25
    seed: int = 0
    batch_size: int | None = None
    repeats: int = 1
    accelerator: str = "auto"
    condition_draw: str | None = None

    def __post_init__(self) -> None:
        for name in ("num_samples", "steps", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"Option 'protocol.{name}' must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class MethodRun:
    """One method of a comparison.

    Attributes:
        name: the row's label.
        config: its ``lightning-fair`` config.
        overrides: command-line arguments applied on top of it.
        checkpoint: a checkpoint to test (a method that needs ``fit`` is fitted first without one).
    """

    name: str
    config: Path
    overrides: tuple[str, ...] = ()
    checkpoint: str | None = None


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


def run_method(run: MethodRun, protocol: Protocol, log_dir: str, group: str) -> dict[str, Any]:
    """Fits ``run`` if it needs it and has no checkpoint, generates and evaluates under ``protocol``; returns its row.

    Its logs go to ``<log_dir>/<group>/<name>``, a fit to ``<log_dir>/<group>/<name>/fit-<key>`` (never over the
    checkpoints of the config's own users), ``key`` a hash of everything in the config that a fit depends on: a later
    run with the same key reuses the finished fit, or resumes an interrupted one from its ``last.ckpt``.
    """
    method, config, checkpoint = run.name, run.config, run.checkpoint
    overrides = [
        f"--seed_everything={protocol.seed}",
        f"--model.init_args.seed={protocol.seed}",
        f"--model.init_args.sampler.num_inference_steps={protocol.steps}",
        f"--data.init_args.num_samples={protocol.num_samples}",
        f"--trainer.logger.init_args.save_dir={log_dir}",
        f"--trainer.logger.init_args.name={group}/{method}",
        f"--trainer.accelerator={protocol.accelerator}",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
    ]
    if protocol.batch_size:
        overrides.append(f"--data.init_args.batch_size={protocol.batch_size}")
    if protocol.condition_draw:
        overrides.append(f"--model.init_args.sampler.condition_draw={protocol.condition_draw}")
    overrides += list(run.overrides)
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # the CLI must not see the caller's own arguments
        cli = build_cli(["-c", str(config), *overrides], run=False)
    trainer, model = cli.trainer, cli.model
    evaluators = [callback for callback in trainer.callbacks if isinstance(callback, FairnessEvaluator)]
    if not evaluators:
        raise ValueError(f"{config} has no FairnessEvaluator callback: nothing to report for {method!r}")
    fit_seconds, fit_reused = 0.0, False
    if checkpoint is None and getattr(model, "needs_fit", False):
        folder = Path(log_dir, group, method, f"fit-{fit_key(cli)}").resolve()
        for callback in trainer.checkpoint_callbacks:
            callback.dirpath = str(folder / "checkpoints")
        checkpoint, fit_seconds, fit_reused = fit_once(trainer, model, cli.datamodule, folder)
    clock = SamplingClock(model)
    run_seconds = []
    for _ in range(protocol.repeats):  # every repeat generates the same images (per-sample seeds)
        clock.seconds = 0.0
        trainer.test(model, cli.datamodule, ckpt_path=checkpoint, verbose=False)
        run_seconds.append(clock.seconds)
    results, evaluator = evaluators[0].results, evaluators[0]
    prefix = f"proportion/{evaluator.sensitive}="
    return {
        "method": method,
        "config": str(config),
        "checkpoint": checkpoint,
        "num_samples": int(results["num_samples"]),
        "steps": protocol.steps,
        "seed": protocol.seed,
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
        "fit_reused": fit_reused,
        "log_dir": str(trainer.log_dir),
    }


FIT_INDEPENDENT = (
    ("config",),
    ("ckpt_path",),
    ("trainer", "logger"),
    ("trainer", "callbacks"),
    ("trainer", "enable_progress_bar"),
    ("trainer", "accelerator"),
    ("trainer", "devices"),
    ("data", "init_args", "num_samples"),
    ("data", "init_args", "batch_size"),
    ("data", "init_args", "skip_existing"),
)


def fit_key(cli: LightningCLI) -> str:
    """A hash of the resolved config without what a fit does not depend on (logging, sample count, devices)."""
    config = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False, skip_check=True))
    for path in FIT_INDEPENDENT:
        parent = functools.reduce(
            lambda node, key: node.get(key, {}) if isinstance(node, dict) else {}, path[:-1], config
        )
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def fit_once(trainer: Trainer, model: LightningModule, data: Any, folder: Path) -> tuple[str, float, bool]:
    """The checkpoint of the fit in ``folder``: read back when finished, else fitted (resumed from ``last.ckpt``).

    Returns:
        The final checkpoint, the seconds this call spent fitting, and whether a finished fit was reused.
    """
    final, record = folder / "fitted.ckpt", folder / "fitted.json"
    if record.is_file() and final.is_file():
        return str(final), 0.0, True
    last = folder / "checkpoints" / "last.ckpt"
    start = time.perf_counter()
    trainer.fit(model, data, ckpt_path=str(last) if last.is_file() else None)
    seconds = time.perf_counter() - start
    trainer.save_checkpoint(final)  # the end of the fit, whatever the checkpoint interval
    if trainer.is_global_zero:
        write_text_atomically(record, json.dumps({"checkpoint": str(final), "fit_seconds": seconds}, indent=2) + "\n")
    return str(final), seconds, False


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
