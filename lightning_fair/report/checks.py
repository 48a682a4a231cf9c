"""What a report cannot vouch for: the checks of its backbone, its calibrations, its classifier and its metrics."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightning_fair.checks import BackboneVerdict
from lightning_fair.report.tables import quality

CHANCE_GAIN = 0.1  # agreement within this share of the way from chance to 1 is at chance
MIN_CONFIDENT = 0.5  # least share of plain samples the classifier labels with probability >= 0.9


@dataclass(frozen=True)
class ReportCheck:
    """One check of a report.

    Attributes:
        name: what was checked (``backbone``, ``calibration``, ``agreement``, ``classifier``, ``metrics``).
        passed: whether it passed.
        detail: the numbers, and what a failure means.
        methods: the rows a failure concerns.
    """

    name: str
    passed: bool
    detail: str
    methods: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """The fields, for ``results.json``."""
        return {**asdict(self), "methods": list(self.methods)}


def report_checks(rows: list[dict[str, Any]], backbone: BackboneVerdict | None) -> list[ReportCheck]:
    """The checks of a report's rows (``plain`` first) and of its backbone (``None``: not checked)."""
    every = tuple(row["method"] for row in rows)
    checks = []
    if backbone is not None:
        checks.append(ReportCheck("backbone", backbone.usable, backbone.summary(), every))
    plain = rows[0]
    if plain["confident"] is not None:
        confident = plain["confident"] >= MIN_CONFIDENT
        detail = f"the classifier labels {plain['confident']:.0%} of plain's samples with probability >= 0.9"
        if not confident:
            detail += " (the metrics of every row rest on its labels)"
        checks.append(ReportCheck("classifier", confident, detail, every))
    for row in rows:
        method = row["method"]
        for search in _calibrations(row):
            detail = f"{method}: {search['option']} {search['chosen']:g} "
            detail += "reached the target" if search["reached"] else "did not reach the target (least FD chosen)"
            checks.append(ReportCheck("calibration", bool(search["reached"]), detail, (method,)))
        if row["agreement"] is not None:
            chance = 1 / len(row["proportions"])
            at_chance = (row["agreement"] - chance) / (1 - chance) < CHANCE_GAIN
            detail = f"{method}: agreement {row['agreement']:.3f} with its requested classes (chance {chance:.2f})"
            checks.append(ReportCheck("agreement", not at_chance, detail, (method,)))
        values = {"fd": row.get("fd")}
        if row.get("has_reference", True):  # without reference images no distance is computed: none is missing
            values[f"fid_{row.get('feature_space', 'cls')}"] = quality(row, "fid")
        undefined = [name for name, value in values.items() if value is None]
        if undefined:
            checks.append(ReportCheck("metrics", False, f"{method}: {', '.join(undefined)} undefined", (method,)))
    return checks


def failed_methods(checks: list[ReportCheck]) -> dict[str, list[str]]:
    """The names of the failed checks of each row."""
    failed: dict[str, list[str]] = {}
    for check in checks:
        if not check.passed:
            for method in check.methods:
                failed.setdefault(method, []).append(check.name)
    return failed


def checks_section(checks: list[ReportCheck]) -> list[str]:
    """The Markdown lines of the checks, failures first."""
    failures = sum(not check.passed for check in checks)
    head = f"**{failures} check(s) failed**: rows marked (!) rest on them." if failures else "Every check passed."
    lines = ["## Checks", "", head, ""]
    for check in sorted(checks, key=lambda check: check.passed):
        lines.append(f"- {'PASSED' if check.passed else 'FAILED'} {check.name}: {check.detail}")
    return [*lines, ""]


def _calibrations(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The scale searches of a row's fit (``<option>_curve.json`` in its fit folder)."""
    folder = row.get("fit_folder")
    if not folder:
        return []
    searches = [json.loads(path.read_text()) for path in sorted(Path(folder).glob("*_curve.json"))]
    return [search for search in searches if "reached" in search]
