"""The comparison's rows as a Markdown table."""

from __future__ import annotations

from typing import Any


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
