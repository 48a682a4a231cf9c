"""Models shipped inside the package (diffusers and Lightning-checkpoint folders) and their lookup."""

from __future__ import annotations

from pathlib import Path

SHIPPED_MODELS_DIR = Path(__file__).parent
CONDITIONING_FILE = "lightning_fair.json"  # written next to a diffusers model: what it is conditioned on


def shipped_models() -> list[str]:
    """Names of the models shipped with the package."""
    return sorted(path.name for path in SHIPPED_MODELS_DIR.iterdir() if path.is_dir() and not path.name.startswith("_"))


def resolve_model_path(reference: str, kind: str) -> Path:
    """Returns the local path of a model given by path or by the name of a shipped model.

    Args:
        reference: a local file or folder, or the name of a model shipped with the package.
        kind: what the model is, for the error message (e.g. ``"diffusion backbone"``).

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
        f"No {kind} at '{path.resolve()}' and no shipped model named {reference!r} in {SHIPPED_MODELS_DIR} "
        f"(shipped: {', '.join(shipped_models()) or 'none'}). Models are never downloaded: train one with "
        "`lightning-fair fit -c configs/<dataset>/pretrain_unet.yaml` or point to a local diffusers folder."
    )
