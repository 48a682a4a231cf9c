r"""Fairness benchmark: every listed method on the same requests, classifier and metrics, in one run.

Each method runs on the setup ``--setup`` (data, backbone, classifier, evaluator) with its config
``configs/methods/<method>.yaml`` (or one given with ``--config``, under any label), the run's sample count, step
count and seed, plus its ``--override`` arguments. A method that needs
``fit`` (it trains a module or calibrates) takes its checkpoint from ``--ckpt METHOD=PATH`` or is fitted first
with its config. ``plain`` always runs: the ``time_ratio`` of every row is its sampling time over plain's in the
same run.

Run from the repository root (the configs' data folders are relative to it)::

    python benchmarks/fairness.py --setup configs/setups/synthetic_faces.yaml --methods plain,conditional \
        --num-samples 512 --steps 25 --seed 0 --out results.json
    python benchmarks/fairness.py --setup configs/setups/shapes.yaml --methods plain,distribution_guidance

Prints a Markdown table and writes a JSON list of rows with ``method``, ``fd``, ``fd_l1``, ``fd_kl``,
``proportions`` (of the sensitive attribute), ``fd_by_attribute`` (with the evaluator's ``extra_targets``),
``dp_gap``, ``bias_score`` (InvDiff's, over all samples), ``bias_score_by_condition`` (its mean and per-class
values within the classes a method requested, per conditioning attribute: InvDiff's per-prompt score), ``fid_cls``,
``kid_cls``, ``confident``, ``agreement`` (of the sensitive attribute with the class the method requested, where it
requests one), ``seconds`` (time spent generating, evaluation excluded, at the pace of the batches after a warm-up
batch: see ``SamplingTimer``; the fastest of ``--repeats`` runs), ``run_seconds`` (every run), ``warmup_seconds``
(each run's first batch), ``time_ratio`` (the median over the timed batches of the method's time over plain's on
the same samples right after it, ``pair_ratios``; with ``--no-paired-timing`` the ratio of the seconds), ``fit``
(``none``, ``fitted``, ``reused`` or ``given``), ``fit_seconds``, ``trainable_parameters``, ``checkpoint`` (the
given one, or the end of the fit in
``<log-dir>/<setup>/<method>/fit-<key>``, ``key`` a hash of everything in the config a fit depends on: a later run
with the same key reuses the finished fit or resumes an interrupted one; a benchmark never writes into the config's
own checkpoint folder). The runs themselves are
``lightning_fair.report.run_method``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lightning_fair.report import MethodRun, Protocol, markdown_table, run_method, time_ratios

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


def method_config(method: str, configs: dict[str, str]) -> Path:
    """The config of ``method``: given with ``--config`` or ``configs/methods/<method>.yaml``."""
    folder = REPO_ROOT / "configs" / "methods"
    path = Path(configs[method]) if method in configs else folder / f"{method}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in folder.glob("*.yaml"))
        raise SystemExit(f"No config for method {method!r} at {path} (configs/methods has {available})")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--setup", default="configs/setups/synthetic_faces.yaml", help="the setup config every method runs on"
    )
    parser.add_argument("--methods", default="plain", help="comma-separated method names (plain always runs)")
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--steps", type=int, default=25, help="denoising steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the config's)")
    parser.add_argument("--repeats", type=int, default=1, help="generation runs per method; `seconds` is the fastest")
    parser.add_argument(
        "--no-paired-timing",
        action="store_true",
        help="time_ratio from the runs' seconds, not from each batch against plain's right after it",
    )
    parser.add_argument("--ckpt", action="append", default=[], metavar="METHOD=PATH", help="checkpoint of a method")
    parser.add_argument("--config", action="append", default=[], metavar="METHOD=PATH", help="config of a method")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="METHOD=ARG",
        help="a command-line argument for one method, e.g. 'dg=--model.init_args.guidance_scale=50' (repeatable)",
    )
    parser.add_argument(
        "--condition-draw",
        choices=["independent", "balanced"],
        default=None,
        help="every method's per-sample class draws (default: each config's)",
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
    protocol = Protocol(
        options.num_samples,
        options.steps,
        options.seed,
        options.batch_size,
        options.repeats,
        options.accelerator,
        options.condition_draw,
        not options.no_paired_timing,
    )
    setup = Path(options.setup)
    if not setup.is_file():
        raise SystemExit(f"--setup: no setup config at {setup}")
    runs = [
        MethodRun(method, setup, method_config(method, configs), tuple(extras[method]), checkpoints.get(method))
        for method in methods
    ]
    rows, reference = [], None
    for run in runs:
        paired = reference if protocol.paired_timing else None
        row, _, model = run_method(run, protocol, options.log_dir, setup.stem, reference=paired)
        reference = reference or model  # plain, the first run
        rows.append(row)
    time_ratios(rows)
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
