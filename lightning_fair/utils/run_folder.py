"""The folder a run writes its results into."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Trainer


def run_folder(trainer: Trainer) -> Path:
    """The logger's version folder, else the trainer's root folder.

    ``Trainer.log_dir`` broadcasts from rank 0, so every process must call this, not only the one that writes.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)
