"""The comparison's rows as Markdown tables: fairness, then quality and cost."""

from __future__ import annotations

from typing import Any


def cell(value: float | None, digits: int) -> str:
    """A table cell: ``value`` with ``digits`` decimals, ``-`` where it is undefined."""
    return "-" if value is None else f"{value:.{digits}f}"


def label(row: dict[str, Any]) -> str:
    """The row's method, marked ``(!)`` when a check it rests on failed (the report's checks section says which)."""
    failed = any(not check["passed"] for check in row.get("checks", []))
    return f"{row['method']} (!)" if failed else row["method"]


def _table(header: list[str], lines: list[list[str]]) -> str:
    rows = [header, ["---"] * len(header), *lines]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def fairness_table(rows: list[dict[str, Any]]) -> str:
    """FD, proportions against the target, DP gap, bias scores and agreement (FD per attribute if several)."""
    sensitive = rows[0]["sensitive"]
    several = any(len(row["fd_by_attribute"]) > 1 for row in rows)
    header = ["method", "FD", "FD (L1)", "FD (KL)", f"P({sensitive})", "target", "DP gap", "bias", "bias per condition"]
    header += ["agreement", "confident"] + (["FD by attribute"] if several else [])
    lines = []
    for row in rows:
        by_condition = "; ".join(
            f"{attribute} {cell(scores['mean'], 3)} ("
            + ", ".join(f"{value}: {cell(score, 3)}" for value, score in scores["per_class"].items())
            + ")"
            for attribute, scores in row["bias_score_by_condition"].items()
        )
        line = [
            label(row),
            cell(row["fd"], 4),
            cell(row["fd_l1"], 4),
            cell(row["fd_kl"], 4),
            "/".join(cell(p, 3) for p in row["proportions"]),
            "/".join(f"{p:.2f}" for p in row["target_distribution"]),
            cell(row["dp_gap"], 4),
            cell(row["bias_score"], 3),
            by_condition or "-",
            cell(row["agreement"], 3),
            cell(row["confident"], 3),
        ]
        if several:
            line.append(", ".join(f"{name} {cell(fd, 4)}" for name, fd in row["fd_by_attribute"].items()))
        lines.append(line)
    return _table(header, lines)


def cost_table(rows: list[dict[str, Any]]) -> str:
    """Quality (``fid_cls``, ``kid_cls``) and cost: generation seconds, ratio to the first row, fit, parameters."""
    header = ["method", "fid_cls", "kid_cls", "seconds", "time ratio", "fit", "fit seconds", "trainable parameters"]
    lines = [
        [
            label(row),
            cell(row["fid_cls"], 2),
            cell(row["kid_cls"], 4),
            f"{row['seconds']:.1f}",
            cell(row.get("time_ratio"), 3),
            row["fit"],
            f"{row['fit_seconds']:.0f}",
            f"{row['trainable_parameters']:,}",
        ]
        for row in rows
    ]
    return _table(header, lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Both tables, one after the other."""
    return fairness_table(rows) + "\n\n" + cost_table(rows)
