"""One method's run under a shared protocol: fit if needed, generate, evaluate, and its row of results."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from lightning_fair.callbacks import FairnessEvaluator, SampleGrid, SamplingTimer
from lightning_fair.cli import build_cli
from lightning_fair.metrics.prompts import across_prompts
from lightning_fair.models import resolve_model_path
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
        paired_timing: time each method's batches against the first method's (plain) generating the same samples
            right after each of them (see :class:`SamplingTimer`): ``time_ratio`` is then the median of the batch
            pairs' ratios, which a machine whose speed drifts leaves alone; costs one more generation of the first
            method per method. ``False``: the ratio of the runs' ``seconds``.
    """

    num_samples: int = 512
    steps: int = 25
    seed: int = 0
    batch_size: int | None = None
    repeats: int = 1
    accelerator: str = "auto"
    condition_draw: str | None = None
    paired_timing: bool = True

    def __post_init__(self) -> None:
        for name in ("num_samples", "steps", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"Option 'protocol.{name}' must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class MethodRun:
    """One method of a comparison.

    Attributes:
        name: the row's label.
        setup: the setup config it runs on.
        config: its method config.
        overrides: command-line arguments applied on top of them.
        checkpoint: a checkpoint to test (a method that needs ``fit`` is fitted first without one).
    """

    name: str
    setup: Path
    config: Path
    overrides: tuple[str, ...] = ()
    checkpoint: str | None = None


@dataclass(frozen=True)
class SharedParts:
    """What every method of a comparison uses in place of the setup's own (``None``: the setup's).

    Attributes:
        backbone: the diffusion model (the top-level ``backbone`` and ``model.init_args.backbone``).
        classifier: the attribute classifier (the top-level ``classifier``, which method configs follow).
        dataset: the image data, a class path and its init args (the top-level ``dataset``).
        prompts: the prompts of a text-to-image backbone (the top-level ``prompts``), as a mapping.
    """

    backbone: str | None = None
    classifier: str | None = None
    dataset: dict[str, Any] | None = None
    prompts: dict[str, Any] | None = None

    def overrides(self) -> list[str]:
        """The command-line arguments that set these parts."""
        arguments = []
        if self.backbone is not None:
            arguments += [f"--backbone={self.backbone}", f"--model.init_args.backbone={self.backbone}"]
        if self.classifier is not None:
            arguments.append(f"--classifier={self.classifier}")
        if self.dataset is not None:
            arguments.append(f"--dataset={json.dumps(self.dataset)}")
        if self.prompts is not None:
            arguments.append(f"--prompts={json.dumps(self.prompts)}")
        return arguments


def run_method(
    run: MethodRun,
    protocol: Protocol,
    log_dir: str,
    group: str,
    comparison_samples: int = 0,
    shared: SharedParts | None = None,
    announce: Callable[[str], None] | None = None,
    reference: LightningModule | None = None,
) -> tuple[dict[str, Any], FairnessEvaluator, LightningModule]:
    """Fits ``run`` if it needs it and has no checkpoint, generates and evaluates under ``protocol``.

    Its logs go to ``<log_dir>/<group>/<name>`` (also its ``trainer.default_root_dir``), a fit to
    ``<log_dir>/<group>/<name>/fit-<key>`` (never over the checkpoints of the config's own users), ``key`` a hash of
    everything in the config that a fit depends on: a later run with the same key reuses the finished fit, or
    resumes an interrupted one from its ``last.ckpt``. A fit folder holds ``fitted.ckpt`` and the fit's diagnostics
    (:meth:`DebiasingMethod.fit_diagnostics`); ``run.checkpoint`` may name one (a folder, or a shipped one by name)
    as well as a checkpoint file.

    Args:
        run: the method, its config and overrides.
        protocol: what every method shares.
        log_dir: the folder of the runs and cached fits.
        group: the sub-folder of this comparison (e.g. the dataset).
        comparison_samples: with ``n > 0``, samples ``0..n-1`` are also written as one row,
            ``comparison_<Method>.png`` in the run folder (the same initial noise for every method).
        shared: what replaces the setup's backbone, classifier and dataset.
        announce: told each stage as it starts (``fitting``, ``generating``).
        reference: a method (the first row's) timed on the same samples after each timed batch: the row's
            ``paired_ratio`` (see :class:`SamplingTimer`); ``None``: none.

    Returns:
        The row of results, the evaluator that scored it and the method (a reference for the rows after it).
    """
    method, config = run.name, run.config
    shared = shared or SharedParts()
    logger = {"class_path": CSV_LOGGER, "init_args": {"save_dir": log_dir, "name": f"{group}/{method}"}}
    overrides = [
        f"--trainer.default_root_dir={Path(log_dir, group, method)}",
        f"--seed_everything={protocol.seed}",
        f"--model.init_args.seed={protocol.seed}",
        f"--model.init_args.sampler.num_inference_steps={protocol.steps}",
        f"--data.init_args.num_samples={protocol.num_samples}",
        f"--trainer.logger={json.dumps(logger)}",
        f"--trainer.accelerator={protocol.accelerator}",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
    ]
    if protocol.batch_size:
        overrides.append(f"--data.init_args.batch_size={protocol.batch_size}")
    overrides += shared.overrides()
    if protocol.condition_draw:
        overrides.append(f"--model.init_args.sampler.condition_draw={protocol.condition_draw}")
    overrides += list(run.overrides)
    cli = build_cli(["-c", str(run.setup), "-c", str(config), *overrides], run=False)
    trainer, model = cli.trainer, cli.model
    evaluators = [callback for callback in trainer.callbacks if isinstance(callback, FairnessEvaluator)]
    if not evaluators:
        raise ValueError(f"{run.setup} has no evaluator: nothing to report for {method!r}")
    if comparison_samples:
        trainer.callbacks.append(SampleGrid(comparison_samples, comparison_samples, "comparison_{method}.png"))
    fit_seconds, fit, fit_folder = 0.0, "none", None
    if run.checkpoint is not None:
        checkpoint, fit_folder = given_fit(run.checkpoint)
        fit = "given"
    elif getattr(model, "needs_fit", False):
        fit_folder = Path(log_dir, group, method, f"fit-{fit_key(cli)}").resolve()
        model.checkpoint_dir = fit_folder / "checkpoints"
        if announce is not None:
            announce("fitting")
        checkpoint, fit_seconds, reused = fit_once(trainer, model, cli.datamodule, fit_folder)
        fit = "reused" if reused else "fitted"
    else:
        checkpoint = None
    comparison = str(Path(trainer.log_dir, f"comparison_{type(model).__name__}.png")) if comparison_samples else None
    if announce is not None:
        announce("generating")
    timer = SamplingTimer(reference=reference)
    trainer.callbacks.insert(0, timer)  # first: its clock stops right after each test step
    run_seconds, warmup_seconds, pair_ratios = [], [], []
    for _ in range(protocol.repeats):  # every repeat generates the same images (per-sample seeds)
        trainer.test(model, cli.datamodule, ckpt_path=checkpoint, verbose=False)
        run_seconds.append(timer.seconds)
        warmup_seconds.append(timer.warmup_seconds)
        pair_ratios += timer.pair_ratios
    result = evaluators[0].result
    condition = result.conditions.get(result.sensitive)
    space = evaluators[0].classifier.feature_space
    row = {
        "method": method,
        "setup": str(run.setup),
        "backbone": model.backbone_reference,
        "prompts": asdict(model.prompts) if model.backbone.conditioning == "text" else None,
        "config": str(config),
        "checkpoint": checkpoint,
        "num_samples": result.num_samples,
        "steps": protocol.steps,
        "seed": protocol.seed,
        "fd": result.fd,
        "fd_l1": result.fd_l1,
        "fd_kl": result.fd_kl,
        "sensitive": result.sensitive,
        "target_distribution": result.target_distribution,
        "proportions": result.sensitive_proportions,
        "fd_by_attribute": {result.sensitive: result.fd, **result.fd_by_attribute},
        "bias_score": result.bias_score,
        "bias_score_by_condition": {
            attribute: {
                "mean": scores.bias_score,
                "per_class": {str(k): score for k, score in enumerate(scores.bias_score_by_class)},
            }
            for attribute, scores in result.conditions.items()
        },
        "dp_gap": result.dp_gap,
        "feature_space": space,
        "has_reference": evaluators[0].reference is not None,
        f"fid_{space}": None if result.quality is None else result.quality.fid,
        f"kid_{space}": None if result.quality is None else result.quality.kid,
        "clip_score": result.clip_score,
        "unknown": result.unknown,
        "confident": result.confident,
        "agreement": None if condition is None else condition.agreement,
        "seconds": min(run_seconds),
        "run_seconds": run_seconds,
        "warmup_seconds": warmup_seconds,
        "paired_ratio": statistics.median(pair_ratios) if pair_ratios else None,
        "pair_ratios": pair_ratios,
        "fit": fit,
        "fit_seconds": fit_seconds,
        "fit_folder": None if fit_folder is None else str(fit_folder),
        "log_dir": str(trainer.log_dir),
        "comparison": comparison,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "sampler": {key: model.hparams["sampler"][key] for key in SAMPLER_SETTINGS},
        **prompt_rows(evaluators[0]),
    }
    return row, evaluators[0], model


def time_ratios(rows: list[dict[str, Any]]) -> None:
    """Sets each row's ``time_ratio`` against the first row's: its ``paired_ratio`` when measured, else seconds."""
    for row in rows:
        paired = row.get("paired_ratio")
        row["time_ratio"] = paired if paired is not None else row["seconds"] / rows[0]["seconds"]
    rows[0]["time_ratio"] = 1.0


def prompt_rows(evaluator: FairnessEvaluator) -> dict[str, Any]:
    """The per-prompt results of a run with a prompt set (``None`` otherwise).

    ``per_prompt``: each prompt's metadata, samples, proportions of ``sensitive``, FD and CLIP score;
    ``across_prompts``: the mean, spread and worst prompt of each metric.
    """
    prompt_set, results = evaluator.prompt_set, evaluator.prompt_results
    if prompt_set is None or not results:
        return {"per_prompt": None, "across_prompts": None}
    per_prompt = [
        {
            "prompt": prompt,
            "metadata": metadata,
            "num_samples": result.num_samples,
            "proportions": result.sensitive_proportions,
            "fd": result.fd,
            "unknown": result.unknown,
            "clip_score": result.clip_score,
        }
        for prompt, metadata, result in zip(prompt_set.prompts, prompt_set.metadata, results, strict=True)
    ]
    return {"per_prompt": per_prompt, "across_prompts": across_prompts(results, list(prompt_set.prompts))}


FITTED_CHECKPOINT = "fitted.ckpt"
CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"  # every run logs to <log_dir>/<group>/<method>/version_N
SAMPLER_SETTINGS = ("scheduler", "eta", "cfg_scale", "condition_draw")  # what makes rows differ beyond the method
FIT_RECIPE = "a fit folder is what `lightning-fair report` leaves under <log_dir>/<group>/<method>/fit-<key>"

FIT_INDEPENDENT = (
    ("config",),
    ("ckpt_path",),
    ("trainer", "logger"),
    ("trainer", "callbacks"),
    ("trainer", "default_root_dir"),
    ("evaluator",),
    ("method_settings",),
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

    A new fit leaves ``fitted.ckpt``, ``fitted.json`` and a copy of the method's diagnostics in ``folder``.

    Returns:
        The final checkpoint, the seconds this call spent fitting, and whether a finished fit was reused.
    """
    final, record = folder / FITTED_CHECKPOINT, folder / "fitted.json"
    if record.is_file() and final.is_file():
        return str(final), 0.0, True
    last = folder / "checkpoints" / "last.ckpt"
    start = time.perf_counter()
    trainer.fit(model, data, ckpt_path=str(last) if last.is_file() else None)
    seconds = time.perf_counter() - start
    trainer.save_checkpoint(final, weights_only=True)  # the end of the fit, whatever the checkpoint interval
    if trainer.is_global_zero:
        for diagnostic in model.fit_diagnostics():
            if diagnostic.is_file():
                shutil.copyfile(diagnostic, folder / diagnostic.name)
        write_text_atomically(record, json.dumps({"checkpoint": str(final), "fit_seconds": seconds}, indent=2) + "\n")
    return str(final), seconds, False


def given_fit(reference: str) -> tuple[str, Path | None]:
    """The checkpoint of a given fit: a checkpoint file, or a fit folder (its ``fitted.ckpt``), local or shipped.

    Returns:
        The checkpoint file, and the folder of its diagnostics (``None`` for a bare checkpoint file).
    """
    path = resolve_model_path(reference, "fitted method checkpoint", FIT_RECIPE)
    if path.is_file():
        return str(path), None
    if not (path / FITTED_CHECKPOINT).is_file():
        raise FileNotFoundError(f"Option 'checkpoints': '{path}' is a folder without {FITTED_CHECKPOINT}; {FIT_RECIPE}")
    return str(path / FITTED_CHECKPOINT), path
