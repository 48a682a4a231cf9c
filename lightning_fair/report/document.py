"""The report's files: ``results.json``, ``report.md`` and a self-contained ``report.html`` with its pictures."""

from __future__ import annotations

import base64
import html
import json
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from lightning_fair.report.checks import ReportCheck, checks_section
from lightning_fair.report.pictures import (
    fairness_quality,
    prompt_shares,
    proportion_bars,
    side_by_side,
    timestep_curves,
)
from lightning_fair.report.runs import Protocol
from lightning_fair.report.tables import cost_table, fairness_table, prompt_table
from lightning_fair.utils.files import write_text_atomically

PACKAGES = ("lightning-fair", "torch", "lightning", "diffusers", "torchmetrics")
SIDE_BY_SIDE = "side_by_side.png"
JSON_PREVIEW_CHARACTERS = 4000
SIDE_BY_SIDE_NOTE = (
    "Column i of every row starts from the same initial noise; a row labelled with its eta draws fresh noise at"
    " every step as well, so it matches the others less closely."
)


def versions() -> dict[str, str]:
    """The versions of Python and the packages the numbers depend on."""
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def collect_files(rows: list[dict[str, Any]], folder: Path) -> dict[str, list[Path]]:
    """Copies each method's sample grid and its fit's diagnostics into ``folder`` (per-timestep tables also drawn).

    Returns:
        The copied files by method: pictures (``.png``) and reports (``.json``, ``.csv``).
    """
    files: dict[str, list[Path]] = {}
    for row in rows:
        found = sorted(Path(row["log_dir"]).glob("samples_*.png"))
        if row.get("fit_folder"):
            fit = Path(row["fit_folder"])
            found += sorted(path for path in fit.iterdir() if path.suffix in (".png", ".json", ".csv"))
        copied = []
        for source in found:
            if source.name == "fitted.json":
                continue
            target = folder / f"{row['method']}_{source.name}"
            shutil.copyfile(source, target)
            copied.append(target)
            drawn = target.with_suffix(".png")
            if source.suffix == ".csv" and not (source.with_suffix(".png")).exists() and _per_timestep(source):
                timestep_curves(source, drawn, source.stem.replace("_", " "))
                copied.append(drawn)
        files[row["method"]] = copied
    return files


def strip_label(row: dict[str, Any]) -> str:
    """The row's label in the side-by-side picture: its method, and its per-step noise if it has some."""
    sampler = row.get("sampler", {})
    stochastic = sampler.get("scheduler") == "ddpm" or sampler.get("eta", 0.0) > 0
    return f"{row['method']}\n({sampler['scheduler']}, eta {sampler['eta']:g})" if stochastic else row["method"]


def _per_timestep(table: Path) -> bool:
    with table.open() as file:
        return "timestep" in file.readline().strip().split(",")


def write_report(
    rows: list[dict[str, Any]],
    protocol: Protocol,
    folder: Path,
    setting: dict[str, Any],
    checks: list[ReportCheck] | None = None,
) -> None:
    """Writes ``results.json``, the summary pictures, ``report.md`` and ``report.html`` into ``folder``.

    Args:
        rows: one per method (``run_method``'s, with the ``checks`` that concern it).
        protocol: what the methods shared.
        folder: where the report goes.
        setting: what the comparison ran on (backbone, classifier, reference, attributes), shown with the protocol.
        checks: what the report cannot vouch for (a section at the top of the pages).
    """
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomically(folder / "results.json", json.dumps(rows, indent=2) + "\n")
    proportion_bars(rows, folder / "proportions.png")
    fairness_quality(rows, folder / "fairness_quality.png")
    summaries = [folder / "proportions.png", folder / "fairness_quality.png"]
    per_prompt = prompt_table(rows)
    if per_prompt is not None:
        prompt_shares(rows, folder / "prompt_shares.png")
        summaries.append(folder / "prompt_shares.png")
    strips = {strip_label(row): Path(row["comparison"]) for row in rows if row.get("comparison")}
    if strips:
        side_by_side(strips, folder / SIDE_BY_SIDE)
    per_method = collect_files(rows, folder)
    tables = [fairness_table(rows), cost_table(rows), *([per_prompt] if per_prompt is not None else [])]
    settings = {"setting": setting, "protocol": vars(protocol), "versions": versions()}
    verdicts = checks_section(checks) if checks is not None else []
    lines = ["# Debiasing report", "", *verdicts, tables[0], "", tables[1], ""]
    if per_prompt is not None:
        lines += ["## Per prompt", "", per_prompt, ""]
    lines += [" ".join(f"![{path.stem}]({path.name})" for path in summaries), ""]
    if strips:
        lines += ["## The same initial noise, method by method", "", SIDE_BY_SIDE_NOTE, ""]
        lines += [f"![side by side]({SIDE_BY_SIDE})", ""]
    for method, files in per_method.items():
        lines += [f"## {method}", ""] + [
            f"![{file.name}]({file.name})" if file.suffix == ".png" else f"[{file.name}]({file.name})" for file in files
        ]
        lines.append("")
    lines += ["## Setting, protocol and versions", "", "```json", json.dumps(settings, indent=2), "```", ""]
    write_text_atomically(folder / "report.md", "\n".join(lines))
    page = _html(verdicts, tables, summaries, folder / SIDE_BY_SIDE if strips else None, per_method, settings)
    write_text_atomically(folder / "report.html", page)


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _html_table(table: str) -> str:
    rows = [line.strip("|").split(" | ") for line in table.splitlines() if not line.startswith("| ---")]
    head = "".join(f"<th>{html.escape(cell.strip())}</th>" for cell in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell.strip())}</td>" for cell in row) + "</tr>" for row in rows[1:]
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _html_checks(lines: list[str]) -> str:
    """The checks section: its summary line and one item per check."""
    if not lines:
        return ""
    summary = next(line for line in lines[1:] if line)
    items = "".join(f"<li>{html.escape(line[2:])}</li>" for line in lines if line.startswith("- "))
    return f"<h2>Checks</h2><p>{html.escape(summary.replace('**', ''))}</p><ul>{items}</ul>"


def _report_preview(path: Path) -> str:
    text = path.read_text()
    if len(text) > JSON_PREVIEW_CHARACTERS:
        text = text[:JSON_PREVIEW_CHARACTERS] + "\n..."
    return f"<details><summary>{html.escape(path.name)}</summary><pre>{html.escape(text)}</pre></details>"


def _html(
    verdicts: list[str],
    tables: list[str],
    summaries: list[Path],
    strips: Path | None,
    per_method: dict[str, list[Path]],
    settings: dict[str, Any],
) -> str:
    """One page with every picture inlined, readable offline."""
    sections = []
    for method, files in per_method.items():
        pictures = "".join(_image(file) for file in files if file.suffix == ".png")
        reports = "".join(_report_preview(file) for file in files if file.suffix == ".json")
        sections.append(f"<h2>{html.escape(method)}</h2><div>{pictures}</div>{reports}")
    comparison = (
        f"<h2>The same initial noise, method by method</h2><p>{html.escape(SIDE_BY_SIDE_NOTE)}</p>"
        f"<div class='wide'>{_image(strips)}</div>"
        if strips
        else ""
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Debiasing report</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
        "img{max-width:48%;margin:4px;vertical-align:top}.wide img{max-width:100%}</style></head><body>"
        "<h1>Debiasing report</h1>"
        + _html_checks(verdicts)
        + "".join(_html_table(table) for table in tables)
        + "<div>"
        + "".join(_image(path) for path in summaries)
        + "</div>"
        + comparison
        + "".join(sections)
        + f"<h2>Setting, protocol and versions</h2><pre>{html.escape(json.dumps(settings, indent=2))}</pre>"
        + "</body></html>\n"
    )
