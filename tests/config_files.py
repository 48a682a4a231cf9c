"""The configs of the repository, as the tests walk them."""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


def command_configs() -> list[Path]:
    """Every config of ``fit``/``test``/``predict`` (a report's config, with its ``configs_dir``, is not one)."""
    return sorted(
        path for path in CONFIGS_DIR.rglob("*.yaml") if "configs_dir" not in (yaml.safe_load(path.read_text()) or {})
    )
