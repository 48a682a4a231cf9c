"""Models shipped inside the package (diffusers and Lightning-checkpoint folders), their lookup and inspection."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch

SHIPPED_MODELS_DIR = Path(__file__).parent
CONDITIONING_FILE = "lightning_fair.json"  # written next to a diffusers model: its conditioning and training view
DIFFUSION_RECIPE = (
    "train one with `lightning-fair fit -c configs/setups/<setup>.yaml -c configs/training/pretrain_unet.yaml`"
)
CLASSIFIER_RECIPE = (
    "train one with `lightning-fair fit -c configs/setups/<setup>.yaml -c configs/training/classifier.yaml`"
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def shipped_models() -> list[str]:
    """Names of the models shipped with the package."""
    return sorted(path.name for path in SHIPPED_MODELS_DIR.iterdir() if path.is_dir() and not path.name.startswith("_"))


def resolve_model_path(reference: str, kind: str, recipe: str = DIFFUSION_RECIPE) -> Path:
    """Returns the local path of a model given by path or by the name of a shipped model.

    Args:
        reference: a local file or folder, or the name of a model shipped with the package.
        kind: what the model is, for the error message (e.g. ``"diffusion backbone"``).
        recipe: how to get such a model, for the error message (e.g. :data:`CLASSIFIER_RECIPE`).

    Raises:
        FileNotFoundError: saying where it looked; nothing is ever downloaded.
    """
    path = Path(reference).expanduser()
    if path.exists():
        return path
    shipped = SHIPPED_MODELS_DIR / reference
    if shipped.exists():
        return shipped
    raise FileNotFoundError(
        f"No {kind} at '{path.resolve()}' and no shipped model named {reference!r} "
        f"(shipped: {', '.join(shipped_models()) or 'none'}). Models are never downloaded: {recipe}, "
        "or give the path of a local one."
    )


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` if it is missing or is not a JSON object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def has_diffusers_model(folder: Path, class_name: str) -> bool:
    """Whether ``folder`` holds a diffusers ``class_name`` (its ``config.json`` and a weights file)."""
    config = read_json(folder / "config.json") or {}
    return config.get("_class_name") == class_name and _weight_files(folder) != []


def describe_model(path: Path) -> str:
    """What a model file or folder holds, in words (completes "'<path>' is ..." in error messages)."""
    if path.is_file():
        if zipfile.is_zipfile(path):
            return "a zip archive (a checkpoint written by torch.save or Lightning)"
        return f"a file that is not a checkpoint written by torch.save or Lightning ({path.stat().st_size} bytes)"
    if not path.is_dir():
        return "neither a file nor a folder"
    names = sorted(child.name for child in path.iterdir())
    if not names:
        return "an empty folder"
    if (path / "model_index.json").is_file():
        return f"a diffusers pipeline folder with {', '.join(name for name in names if (path / name).is_dir())}"
    config = read_json(path / "config.json")
    if config is None:
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        return f"a folder without a readable config.json (it holds {shown})"
    if "attributes" in config and "model_name" in config:
        what = "an attribute-classifier folder"
    elif "_class_name" in config:
        what = f"a diffusers {config['_class_name']} folder"
    else:
        what = "a folder with a config.json of unknown kind"
    weights = _weight_files(path)
    return f"{what} ({', '.join(weights)})" if weights else f"{what} with config.json only, no weights file"


def read_checkpoint(path: str | Path, option: str) -> dict[str, Any]:
    """Reads a Lightning/torch checkpoint safely (tensors and plain values only), on the CPU.

    Args:
        path: the checkpoint file.
        option: the option that named it, for the error message (e.g. ``"--ckpt_path"``).

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: naming the file if it is not a checkpoint that can be read without unpickling arbitrary objects.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Option '{option}': no checkpoint file at '{path.resolve()}'")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # torch's own message suggests loading unsafely: it is not passed on
        raise ValueError(
            f"Option '{option}': '{path}' is not a readable checkpoint ({type(error).__name__}); expected a file "
            "written by Lightning or torch.save holding only tensors and plain values"
        ) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"Option '{option}': '{path}' holds a {type(checkpoint).__name__}, not a checkpoint")
    return checkpoint


def _weight_files(folder: Path) -> list[str]:
    return sorted(child.name for child in folder.iterdir() if child.is_file() and child.name.endswith(WEIGHT_SUFFIXES))
