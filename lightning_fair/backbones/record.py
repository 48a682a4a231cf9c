"""``lightning_fair.json``: what the framework records beside a diffusers model it trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_fair.models import CONDITIONING_FILE, read_json


def read_record(folder: Path) -> dict[str, Any]:
    """The record of the model in ``folder`` (conditioning, training view), ``{}`` when there is none."""
    path = folder / CONDITIONING_FILE
    if not path.is_file():
        return {}
    record = read_json(path)
    if record is None:
        raise ValueError(f"Option 'backbone': '{path}' is not a JSON object")
    return record
