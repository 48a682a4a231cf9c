"""``lightning-fair report``: every method on one protocol, one command, a folder of tables and pictures."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from lightning_fair.callbacks import FairnessEvaluator
from lightning_fair.cli import add_shared_arguments
from lightning_fair.methods import method_registry
from lightning_fair.methods.conditions import Prompts
from lightning_fair.report.backbone import cached_backbone_check
from lightning_fair.report.checks import report_checks
from lightning_fair.report.document import write_report
from lightning_fair.report.runs import MethodRun, Protocol, SharedParts, run_method, time_ratios

REFERENCE_METHOD = "plain"


DEFAULT_METHODS = [
    "plain",
    "conditional",
    "distribution_guidance",
    "h_sample_guidance",
    "attribute_switching",
    "self_guidance",
]


def report_parser() -> ArgumentParser:
    """The options of ``lightning-fair report`` (all of them can come from a YAML file given with ``-c``)."""
    parser = ArgumentParser(prog="lightning-fair report", description=__doc__)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="a YAML file of these options")
    parser.add_argument(
        "--setup", type=str, required=True, help="the setup config every method runs on (data, backbone, evaluator)"
    )
    parser.add_argument("--methods_dir", type=str, default="configs/methods", help="folder of the methods' configs")
    parser.add_argument(
        "--methods",
        type=list[str],
        default=DEFAULT_METHODS,
        help="the rows: configs <methods_dir>/<label>.yaml",
    )
    parser.add_class_arguments(Protocol, "protocol")
    parser.add_argument("--method_configs", type=dict[str, str], default={}, help="label: config of a row")
    parser.add_argument("--overrides", type=dict[str, list[str]], default={}, help="label: extra arguments")
    parser.add_argument(
        "--checkpoints", type=dict[str, str], default={}, help="label: checkpoint or fit folder to test"
    )
    add_shared_arguments(parser, "every method (default: the setup's)")
    parser.add_argument(
        "--prompts", type=Prompts | None, default=None, help="the prompts of every method (default: the setup's)"
    )
    parser.add_argument(
        "--comparison_samples", type=int, default=8, help="samples per method in the side-by-side picture (0: none)"
    )
    parser.add_argument(
        "--log_dir", type=str | None, default=None, help="where runs and cached fits go (default: <output>/runs)"
    )
    parser.add_argument("--output", type=str, default="report", help="the report's folder")
    parser.add_argument(
        "--backbone_check",
        type=int,
        default=256,
        help="samples per class of the check of the backbone (cached per backbone and classifier; 0: no check)",
    )
    parser.add_argument(
        "--strict", type=bool, default=False, help="a failed check ends the report with exit status 2 (one line)"
    )
    return parser


def planned_runs(options: Any) -> list[MethodRun]:
    """The rows to run, ``plain`` first; an unknown label or a missing config is a one-line error."""
    folder = Path(options.methods_dir)
    setup = Path(options.setup)
    if not setup.is_file():
        raise ValueError(f"Option 'setup': no setup config at {setup}")
    methods = [REFERENCE_METHOD] + [name for name in dict.fromkeys(options.methods) if name != REFERENCE_METHOD]
    named = set(options.method_configs) | set(options.overrides) | set(options.checkpoints)
    known = set(methods) | set(method_registry()) | {path.stem for path in folder.glob("*.yaml")}
    unknown = sorted(named - known)  # a row not run this time may keep its settings; a misspelt one may not
    if unknown:
        raise ValueError(
            f"Options 'method_configs'/'overrides'/'checkpoints' name rows that are neither in 'methods', nor "
            f"registered methods, nor configs of '{folder}': {unknown}"
        )
    runs = []
    for name in methods:
        config = Path(options.method_configs.get(name, folder / f"{name}.yaml"))
        if not config.is_file():
            raise ValueError(f"Option 'methods': no config for {name!r} at {config} (give one in 'method_configs')")
        overrides = tuple(options.overrides.get(name, []))
        runs.append(MethodRun(name, setup, config, overrides, options.checkpoints.get(name)))
    return runs


def describe_setting(options: Any, evaluator: FairnessEvaluator) -> dict[str, Any]:
    """What the comparison ran on, for the report: the setup, its backbone and the evaluator of its runs."""
    setting: dict[str, Any] = {"setup": options.setup, "backbone": options.backbone or "the setup's"}
    if options.dataset is not None:
        setting["dataset"] = f"{options.dataset.init_args.root} ({options.dataset.class_path.rsplit('.', 1)[-1]})"
    reference = evaluator.reference
    return {
        **setting,
        "classifier": evaluator.classifier_reference,
        "sensitive": evaluator.sensitive,
        "target": evaluator.target,
        "target_distribution": evaluator.target_distribution or "each method's, else uniform",
        "reference": None if reference is None else f"{reference.root} ({evaluator.reference_split} split)",
    }


def run_report(args: list[str]) -> list[dict[str, Any]]:
    """Parses ``args``, runs every row (reusing cached fits), writes the report; returns the rows."""
    parser = report_parser()
    options = parser.parse_args(args)
    protocol = Protocol(**vars(options.protocol))
    if options.comparison_samples < 0:
        raise ValueError(f"Option 'comparison_samples' must be at least 0, got {options.comparison_samples}")
    runs = planned_runs(options)
    dataset = None if options.dataset is None else options.dataset.as_dict()
    prompts = None if options.prompts is None else asdict(Prompts(**vars(options.prompts)))
    shared = SharedParts(options.backbone, options.classifier, dataset, prompts)
    group = Path(options.setup).stem
    log_dir = options.log_dir or str(Path(options.output, "runs"))
    rows, evaluators, reference = [], [], None
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    with Progress(*columns, TimeElapsedColumn()) as progress:
        task = progress.add_task("report", total=len(runs))
        for run in runs:

            def announce(stage: str, name: str = run.name) -> None:
                progress.update(task, description=f"report: {name} ({stage})")

            paired = reference if protocol.paired_timing else None
            row, evaluator, model = run_method(
                run, protocol, log_dir, group, options.comparison_samples, shared, announce, paired
            )
            reference = reference or model  # the first method (plain) is every later one's reference
            rows.append(row)
            evaluators.append(evaluator)
            progress.advance(task)
    time_ratios(rows)
    verdict = None
    if options.backbone_check:
        folder = Path(log_dir, group, "backbone_check")
        verdict = cached_backbone_check(rows[0], evaluators[0], options.backbone_check, protocol, folder)
    checks = report_checks(rows, verdict)
    for row in rows:
        row["checks"] = [check.as_dict() for check in checks if row["method"] in check.methods]
    write_report(rows, protocol, Path(options.output), describe_setting(options, evaluators[0]), checks)
    failed = [check for check in checks if not check.passed]
    if options.strict and failed:
        names = ", ".join(f"{check.name} ({'/'.join(check.methods)})" for check in failed)
        raise ValueError(f"--strict: {len(failed)} check(s) failed: {names}; see {Path(options.output, 'report.md')}")
    return rows
