"""The report's pictures: predicted proportions against the target, and fairness against quality, per method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_fair.utils.files import replace_atomically


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _save(figure: Any, path: Path) -> None:
    pyplot = _pyplot()
    figure.tight_layout()
    replace_atomically(path, lambda temporary: figure.savefig(temporary, format="png", dpi=110))
    pyplot.close(figure)


def proportion_bars(rows: list[dict[str, Any]], path: Path) -> None:
    """Each method's predicted share of every class of the sensitive attribute, the target as dashed lines."""
    pyplot = _pyplot()
    classes = len(rows[0]["proportions"])
    figure, axis = pyplot.subplots(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 3.2))
    width = 0.8 / classes
    for k in range(classes):
        positions = [index + (k - (classes - 1) / 2) * width for index in range(len(rows))]
        axis.bar(positions, [row["proportions"][k] for row in rows], width, label=f"{rows[0]['sensitive']}={k}")
        for index, row in enumerate(rows):
            target = row["target_distribution"][k]
            axis.hlines(target, positions[index] - width / 2, positions[index] + width / 2, colors="k", linestyles="--")
    axis.set_xticks(range(len(rows)), [row["method"] for row in rows], rotation=30, ha="right")
    axis.set_ylim(0, 1)
    axis.set_ylabel("predicted share")
    axis.legend(fontsize=8)
    _save(figure, path)


def fairness_quality(rows: list[dict[str, Any]], path: Path) -> None:
    """FD against ``fid_cls`` per method (lower left is fairer and closer to the reference images)."""
    pyplot = _pyplot()
    figure, axis = pyplot.subplots(figsize=(4.8, 3.4))
    for row in rows:
        if row["fid_cls"] is None:
            continue
        axis.scatter(row["fid_cls"], row["fd"])
        axis.annotate(row["method"], (row["fid_cls"], row["fd"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    axis.set_xlabel("fid_cls (classifier features)")
    axis.set_ylabel("FD (L2)")
    axis.margins(x=0.2)  # room for the labels of the outermost points
    axis.set_ylim(bottom=0)
    _save(figure, path)
