"""The report's pictures: proportions against the target, fairness against quality, samples side by side, curves."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning_fair.report.tables import feature_space, quality
from lightning_fair.utils.files import replace_atomically


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _save(figure: Any, path: Path) -> None:
    pyplot = _pyplot()
    figure.tight_layout()
    replace_atomically(
        path, lambda temporary: figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight", pad_inches=0.1)
    )
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
    """FD against ``fid_<space>`` per method (lower left is fairer and closer to the reference images)."""
    pyplot = _pyplot()
    figure, axis = pyplot.subplots(figsize=(4.8, 3.4))
    for row in rows:
        fid = quality(row, "fid")
        if fid is None:
            continue
        axis.scatter(fid, row["fd"])
        axis.annotate(row["method"], (fid, row["fd"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    space = feature_space(rows)
    axis.set_xlabel(f"fid_{space} ({'CLIP' if space == 'clip' else 'classifier'} features)")
    axis.set_ylabel("FD (L2)")
    axis.margins(x=0.2)  # room for the labels of the outermost points
    axis.set_ylim(bottom=0)
    _save(figure, path)


def prompt_shares(rows: list[dict[str, Any]], path: Path) -> None:
    """Per prompt, each method's predicted share of the sensitive attribute's last class (the target dashed)."""
    pyplot = _pyplot()
    with_prompts = [row for row in rows if row.get("per_prompt")]
    prompts = [entry["prompt"] for entry in with_prompts[0]["per_prompt"]]
    classes = len(with_prompts[0]["proportions"])
    figure, axis = pyplot.subplots(figsize=(max(4.8, 0.5 * len(prompts) + 2.5), 3.6))
    for number, row in enumerate(with_prompts):
        shares = [entry["proportions"][-1] for entry in row["per_prompt"]]
        style = {"color": "k", "marker": "s"} if number == 0 else {"marker": "o"}
        axis.plot(range(len(shares)), shares, linestyle="none", label=row["method"], **style)
    axis.axhline(with_prompts[0]["target_distribution"][-1], color="k", linestyle="--", linewidth=0.8)
    axis.set_xticks(range(len(prompts)), prompts, rotation=40, ha="right", fontsize=7)
    axis.set_ylim(0, 1)
    axis.set_ylabel(f"P({with_prompts[0]['sensitive']}={classes - 1})")
    axis.legend(fontsize=7)
    _save(figure, path)


def side_by_side(strips: dict[str, Path], path: Path) -> None:
    """One row of samples per label, the rows stacked: sample ``i`` of every row starts from the same noise.

    Rows sampled with stochastic steps (DDIM ``eta`` > 0) share the initial noise only: say so in their label.
    """
    pyplot = _pyplot()
    images = {method: pyplot.imread(strip) for method, strip in strips.items()}
    width = max(image.shape[1] for image in images.values())
    height = sum(image.shape[0] for image in images.values())
    scale = min(10.0 / width, 0.02)  # inches per pixel: at most 10 inches wide
    figure, axes = pyplot.subplots(
        len(images), 1, figsize=(width * scale + 1.8, height * scale + 0.25 * len(images)), squeeze=False
    )
    for axis, (method, image) in zip(axes[:, 0], images.items(), strict=True):
        axis.imshow(image, interpolation="nearest")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_ylabel(method, rotation=0, ha="right", va="center", fontsize=9)
    _save(figure, path)


def timestep_curves(table: Path, path: Path, name: str) -> None:
    """Every column of a per-timestep CSV (e.g. ``adp_accuracy.csv``) against its ``timestep`` column.

    Args:
        table: the CSV file.
        path: the PNG to write.
        name: what the values are (the y label).
    """
    pyplot = _pyplot()
    with table.open(newline="") as file:
        rows = list(csv.DictReader(file))
    columns = [name for name in rows[0] if name not in ("timestep", "step_index")]
    figure, axis = pyplot.subplots(figsize=(4.8, 3.2))
    timesteps = [float(row["timestep"]) for row in rows]
    for name in columns:
        axis.plot(timesteps, [float(row[name]) if row[name] else float("nan") for row in rows], label=name)
    axis.set_xlabel("timestep")
    axis.set_ylabel(name)
    axis.invert_xaxis()  # sampling order: from noise to image
    axis.legend(fontsize=8)
    _save(figure, path)
