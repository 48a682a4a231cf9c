"""The configs of the repository, as the tests walk them: setups, method and training configs, and their pairs."""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
SETUPS = sorted((CONFIGS_DIR / "setups").glob("*.yaml"))
RUN_CONFIGS = sorted([*(CONFIGS_DIR / "methods").glob("*.yaml"), *(CONFIGS_DIR / "training").glob("*.yaml")])
HOME_SETUP = {  # the setup a config is shown with first in its header (the default: synthetic_faces)
    "invdiff": "synthetic_waterbirds",
    "invdiff_baseline": "synthetic_waterbirds",
    "pretrain_vae": "synthetic_faces_sd",
    "pretrain_latent": "synthetic_faces_sd",
    "pretrain_clip": "synthetic_faces_sd",
    "fair_diffusion": "synthetic_faces_sd",
    "uce": "synthetic_faces_sd",
}


def read(path: Path) -> dict:
    """A config file as a mapping."""
    return yaml.safe_load(path.read_text()) or {}


def run_name(path: Path) -> str:
    """The ``name`` a method or training config gives its run (its key in a setup's ``method_settings``)."""
    return read(path)["name"]


def setup_path(name: str) -> Path:
    """The setup config called ``name``."""
    return CONFIGS_DIR / "setups" / f"{name}.yaml"


def run_config(name: str) -> Path:
    """The method or training config whose run is called ``name``."""
    (path,) = [path for path in RUN_CONFIGS if run_name(path) == name]
    return path


def tuned_pairs() -> list[tuple[Path, Path]]:
    """Every ``(setup, config)`` pair a setup tunes in its ``method_settings`` (the pairs its users run)."""
    return [(setup, run_config(name)) for setup in SETUPS for name in (read(setup).get("method_settings") or {})]


def representative_pairs() -> list[tuple[Path, Path]]:
    """Each method and training config with its home setup, and each setup with its first tuned config (or plain)."""
    pairs = [(setup_path(HOME_SETUP.get(run_name(path), "synthetic_faces")), path) for path in RUN_CONFIGS]
    for setup in SETUPS:
        names = list(read(setup).get("method_settings") or {}) or ["plain"]
        pairs.append((setup, run_config(names[0])))
    return list(dict.fromkeys(pairs))


def pair_id(pair: tuple[Path, Path]) -> str:
    """``setup x config`` for test ids."""
    return f"{pair[0].stem}x{pair[1].stem}"
