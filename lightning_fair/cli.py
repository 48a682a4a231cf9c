"""The ``lightning-fair`` command line (LightningCLI): ``fit``, ``validate``, ``test``, ``predict``."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI

import lightning_fair  # the submodule imports below register the classes for short names in configs
import lightning_fair.callbacks
import lightning_fair.classifiers
import lightning_fair.data
import lightning_fair.methods


def main(args: ArgsType = None) -> None:
    """Runs the command line; ``args`` replaces ``sys.argv[1:]`` (used by in-process tests).

    Any ``LightningModule`` and ``LightningDataModule`` can be named in a config, by full class path or, for
    the package's own classes, by class name.
    """
    LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf", "version": lightning_fair.__version__},
        args=args,
    )
