"""A calibration curve as a CSV table and a PNG picture, written atomically."""

from __future__ import annotations

from pathlib import Path

from lightning_fair.utils.files import replace_atomically, write_csv_atomically


def write_curve(
    folder: Path,
    stem: str,
    x_name: str,
    x: list[float],
    series: dict[str, list[float]],
    chosen: float,
    title: str,
    log_x: bool = False,
    level: tuple[str, float] | None = None,
) -> None:
    """Writes ``<stem>.csv`` (``x_name`` and one column per series) and ``<stem>.png`` into ``folder``.

    Args:
        folder: the run folder.
        stem: file name without suffix.
        x_name: the searched option, the x column and axis.
        x: the searched values.
        series: the measured curves by name; the first is drawn on the left axis, a second on the right one.
        chosen: the chosen value, drawn as a dashed vertical line.
        title: the picture's title.
        log_x: a symmetric-log x axis (for scales searched over orders of magnitude, 0 included).
        level: a horizontal line ``(label, value)`` on the left axis (e.g. the tolerance the first series must meet).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    columns = list(series.values())
    rows = ([value, *(f"{curve[i]:.6f}" for curve in columns)] for i, value in enumerate(x))
    write_csv_atomically(folder / f"{stem}.csv", [x_name, *series], rows)
    figure, axis = pyplot.subplots(figsize=(5.5, 3.4))
    names = list(series)
    axis.plot(x, columns[0], marker="o", color="tab:blue", label=names[0])
    axis.set_ylabel(names[0], color="tab:blue")
    if level is not None:
        axis.axhline(level[1], linestyle=":", color="tab:blue", label=level[0])
        axis.legend(loc="upper center", fontsize=8)
    if len(columns) > 1:
        right = axis.twinx()
        right.plot(x, columns[1], marker="s", color="tab:orange")
        right.set_ylabel(names[1], color="tab:orange")
    if log_x:
        axis.set_xscale("symlog", linthresh=min((value for value in x if value > 0), default=1.0))
    axis.axvline(chosen, linestyle="--", color="gray")
    axis.set_xlabel(x_name)
    axis.set_title(title)
    figure.tight_layout()
    replace_atomically(folder / f"{stem}.png", lambda temporary: figure.savefig(temporary, format="png", dpi=120))
    pyplot.close(figure)
