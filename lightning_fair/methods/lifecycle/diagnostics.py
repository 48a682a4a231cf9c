"""Where a fit's diagnostics are written: curves and reports beside the files they describe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning_fair.utils.files import write_text_atomically


def curve_files(folder: Path, stem: str) -> list[Path]:
    """The picture and the table of a curve written as ``<stem>.png`` and ``<stem>.csv`` in ``folder``."""
    return [folder / f"{stem}.png", folder / f"{stem}.csv"]


def report_path(path: Path) -> Path:
    """The JSON report written beside an artifact file."""
    return path.with_suffix(".json")


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Writes ``report`` as the JSON beside the artifact ``path``, atomically."""
    write_text_atomically(report_path(path), json.dumps(report, indent=2) + "\n")
