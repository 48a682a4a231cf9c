"""The ``lightning-fair`` command line (LightningCLI): ``fit``, ``validate``, ``test``, ``predict``."""

from __future__ import annotations

from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

import lightning_fair  # the submodule imports below register the classes for short names in configs
import lightning_fair.callbacks
import lightning_fair.classifiers
import lightning_fair.data
import lightning_fair.methods


class LightningFairCLI(LightningCLI):
    """LightningCLI whose config and command line are the whole truth: ``--ckpt_path`` brings weights only.

    Lightning's CLI replaces the model's options with the hyperparameters saved in the checkpoint given by
    ``--ckpt_path``, silently overriding the config and the command line. Here a method checkpoint is re-used
    with other sampling options (target distribution, guidance scale, steps, seed), so the saved ones are not
    read back; a checkpoint whose modules do not fit the configured ones fails to load with Lightning's error.
    """

    def _parse_ckpt_path(self) -> None:
        """Keeps the parsed config as it is (see the class docstring)."""

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        """Lightning's subcommand parser; ``predict`` does not keep every generated image (``return_predictions``).

        The command line discards what ``Trainer.predict`` returns, and callbacks (``GenerationWriter``,
        ``FairnessEvaluator``) consume each batch as it comes; returning predictions would only hold every image in
        memory until the end. ``--return_predictions true`` brings Lightning's default back.
        """
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.set_defaults(return_predictions=False)
        return parser


def build_cli(args: ArgsType = None, run: bool = True) -> LightningCLI:
    """Parses ``args`` (default ``sys.argv[1:]``) into a LightningCLI and, with ``run``, runs its subcommand.

    Any ``LightningModule`` and ``LightningDataModule`` can be named in a config, by full class path or, for
    the package's own classes, by class name. With ``run=False`` there is no subcommand: the config is
    parsed and the trainer, model and datamodule are instantiated for the caller to drive.
    """
    # Interpolations (``${model.init_args.target_distributions.Male}``) are resolved after the command-line
    # overrides (``omegaconf+``), and written from the config's root whatever the subcommand.
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    return LightningFairCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf+", "version": lightning_fair.__version__},
        args=args,
        run=run,
    )


def main(args: ArgsType = None) -> None:
    """Runs the command line; ``args`` replaces ``sys.argv[1:]`` (used by in-process tests)."""
    build_cli(args)
