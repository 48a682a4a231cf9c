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


def quality(row: dict[str, Any], name: str) -> float | None:
    """``fid`` or ``kid`` of a row, in its feature space (``fid_cls``, ``fid_clip``)."""
    return row.get(f"{name}_{row.get('feature_space', 'cls')}")


def feature_space(rows: list[dict[str, Any]]) -> str:
    """The feature space of the rows' quality metrics (``cls`` or ``clip``; ``cls+clip`` if they differ)."""
    return "+".join(dict.fromkeys(row.get("feature_space", "cls") for row in rows))


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
    """Quality and cost of each row.

    ``fid_<space>``, ``kid_<space>`` and CLIP score (when measured); generation seconds, ratio to the first row, fit,
    trainable parameters.
    """
    space, scored = feature_space(rows), any(row.get("clip_score") is not None for row in rows)
    header = ["method", f"fid_{space}", f"kid_{space}", *(["CLIP score"] if scored else []), "seconds", "time ratio"]
    header += ["fit", "fit seconds", "trainable parameters"]
    lines = [
        [
            label(row),
            cell(quality(row, "fid"), 2),
            cell(quality(row, "kid"), 4),
            *([cell(row.get("clip_score"), 2)] if scored else []),
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


def prompt_table(rows: list[dict[str, Any]]) -> str | None:
    """Per prompt, each method's predicted share of the sensitive attribute's last class and its FD.

    Then each one's mean, standard deviation and worst prompt over prompts. ``None`` without prompt sets.
    """
    with_prompts = [row for row in rows if row.get("per_prompt")]
    if not with_prompts:
        return None
    sensitive, classes = with_prompts[0]["sensitive"], len(with_prompts[0]["proportions"])
    share = f"P({sensitive}={classes - 1})"
    header = ["prompt", *(f"{label(row)}: {share} / FD" for row in with_prompts)]
    lines = []
    for position, entry in enumerate(with_prompts[0]["per_prompt"]):
        cells = []
        for row in with_prompts:
            other = row["per_prompt"][position] if position < len(row["per_prompt"]) else None
            cells.append("-" if other is None else f"{cell(other['proportions'][-1], 3)} / {cell(other['fd'], 3)}")
        lines.append([entry["prompt"], *cells])
    share_key = f"proportion/{sensitive}={classes - 1}"
    for statistic in ("mean", "std"):
        cells = [
            f"{cell(row['across_prompts'].get(share_key, {}).get(statistic), 3)} / "
            f"{cell(row['across_prompts'].get('fd', {}).get(statistic), 3)}"
            for row in with_prompts
        ]
        lines.append([f"**{statistic}**", *cells])
    worst = [row["across_prompts"].get("fd", {}) for row in with_prompts]
    lines.append(["**worst FD**", *(f"{cell(w.get('worst'), 3)} ({w.get('worst_prompt', '-')})" for w in worst)])
    return _table(header, lines)
