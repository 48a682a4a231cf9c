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

from lightning_fair.report.pictures import fairness_quality, proportion_bars
from lightning_fair.report.runs import Protocol
from lightning_fair.report.tables import markdown_table
from lightning_fair.utils.files import write_text_atomically

PACKAGES = ("lightning-fair", "torch", "lightning", "diffusers", "torchmetrics")
DIAGNOSTICS = ("tau_curve.png", "adp_accuracy.csv", "clusters_k*.json", "groups_k*.json")


def versions() -> dict[str, str]:
    """The versions of Python and the packages the numbers depend on."""
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def collect_pictures(rows: list[dict[str, Any]], folder: Path) -> dict[str, list[Path]]:
    """Copies each method's sample grid and diagnostics from its run folder into ``folder``; returns them by method."""
    pictures: dict[str, list[Path]] = {}
    for row in rows:
        run = Path(row["log_dir"])
        found = sorted(run.glob("samples_*.png"))
        for pattern in DIAGNOSTICS:
            found += sorted(run.glob(pattern)) + sorted(run.parent.glob(pattern))
        copied = []
        for source in found:
            target = folder / f"{row['method']}_{source.name}"
            shutil.copyfile(source, target)
            copied.append(target)
        pictures[row["method"]] = copied
    return pictures


def write_report(rows: list[dict[str, Any]], protocol: Protocol, folder: Path) -> None:
    """Writes ``results.json``, the two summary pictures, ``report.md`` and ``report.html`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomically(folder / "results.json", json.dumps(rows, indent=2) + "\n")
    proportion_bars(rows, folder / "proportions.png")
    fairness_quality(rows, folder / "fairness_quality.png")
    per_method = collect_pictures(rows, folder)
    table = markdown_table(rows)
    settings = {"protocol": vars(protocol), "versions": versions()}
    lines = [
        "# Debiasing report",
        "",
        table,
        "",
        "![predicted proportions](proportions.png) ![fairness against quality](fairness_quality.png)",
        "",
    ]
    for method, files in per_method.items():
        lines += [f"## {method}", ""] + [
            f"![{file.name}]({file.name})" if file.suffix == ".png" else f"[{file.name}]({file.name})" for file in files
        ]
        lines.append("")
    lines += ["## Protocol and versions", "", "```json", json.dumps(settings, indent=2), "```", ""]
    write_text_atomically(folder / "report.md", "\n".join(lines))
    write_text_atomically(folder / "report.html", _html(table, folder, per_method, settings))


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _html(table: str, folder: Path, per_method: dict[str, list[Path]], settings: dict[str, Any]) -> str:
    """One page with every picture inlined, readable offline."""
    rows = [line.strip("|").split("|") for line in table.splitlines() if not line.startswith("|---")]
    head = "".join(f"<th>{html.escape(cell.strip())}</th>" for cell in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell.strip())}</td>" for cell in row) + "</tr>" for row in rows[1:]
    )
    sections = []
    for method, files in per_method.items():
        images = "".join(_image(file) for file in files if file.suffix == ".png")
        sections.append(f"<h2>{html.escape(method)}</h2>{images}")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Debiasing report</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:right}img{max-width:48%;margin:4px}</style></head><body>"
        f"<h1>Debiasing report</h1><table><tr>{head}</tr>{body}</table>"
        f"{_image(folder / 'proportions.png')}{_image(folder / 'fairness_quality.png')}"
        + "".join(sections)
        + f"<h2>Protocol and versions</h2><pre>{html.escape(json.dumps(settings, indent=2))}</pre></body></html>\n"
    )
