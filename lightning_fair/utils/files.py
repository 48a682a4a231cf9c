"""Files written whole or not at all: a reader (or a resumed run) never finds half a file."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any


def replace_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """Calls ``write(temporary_path)`` (a hidden file beside ``path``), then renames the complete file to ``path``.

    A failure or a kill leaves ``path`` as it was; the temporary file is removed on failure (a killed process may
    leave ``.<name>.<pid>.tmp`` behind, which nothing reads).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    replace_atomically(path, lambda temporary: temporary.write_text(text))


def write_csv_atomically(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Writes a CSV table (a header row, then ``rows``) to ``path`` atomically."""

    def write(temporary: Path) -> None:
        with temporary.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    replace_atomically(path, write)
