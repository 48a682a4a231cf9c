"""The ``lightning-fair`` command line (LightningCLI): ``fit``, ``validate``, ``test``, ``predict``."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import jsonargparse
from jsonargparse import Namespace, set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

import lightning_fair  # the submodule imports below register the classes for short names in configs
import lightning_fair.callbacks
import lightning_fair.classifiers
import lightning_fair.data
import lightning_fair.methods
from lightning_fair.callbacks import FairnessEvaluator
from lightning_fair.callbacks.progress_log import ProgressLog
from lightning_fair.models import read_checkpoint
from lightning_fair.utils.preemption import TERMINATED_EXIT_STATUS
from lightning_fair.utils.shared_options import add_shared_arguments

CONFIGURATION_ERROR = 2  # exit status of a run refused for what it was given (as for a command-line error)
SPECIAL_CHECKPOINTS = ("last", "best", "hpc", "registry")
PACKAGE_DIR = Path(lightning_fair.__file__).resolve().parent
JSONARGPARSE_DIR = Path(jsonargparse.__file__).resolve().parent


class LightningFairCLI(LightningCLI):
    """LightningCLI whose config and command line are the whole truth: ``--ckpt_path`` brings weights only.

    Lightning's CLI replaces the model's options with the hyperparameters saved in the checkpoint given by
    ``--ckpt_path``, silently overriding the config and the command line. Here a method checkpoint is re-used
    with other sampling options (target distribution, guidance scale, steps, seed), so the saved ones are not read
    back; a checkpoint whose modules do not fit the configured ones is refused, naming the options that differ.

    The model is built before the trainer's callbacks, whose options often repeat the model's by interpolation
    (``${model.init_args.target_distributions.Male}``): a wrong value is then reported under the option the user
    set. When standard output is not a terminal (SLURM, ``nohup``), progress is logged as lines
    (:class:`~lightning_fair.callbacks.progress_log.ProgressLog`) instead of Lightning's default bar.

    Four top-level options name what several parts of a run share, so that a config states each once and the parts
    interpolate it (``${backbone}``, ``${dataset.init_args.sensitive}``; see ``configs/custom``): ``backbone``,
    ``classifier``, ``dataset`` (the user's image DataModule, not instantiated by itself) and ``evaluator`` (the
    :class:`~lightning_fair.callbacks.FairnessEvaluator`, added to the trainer's callbacks, set from the command
    line as ``--evaluator.classifier``). A shared option that is set but that the config's parts do not follow is
    refused, so that a run never silently uses another model or classifier than the one given.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The shared top-level options (see the class docstring)."""
        add_shared_arguments(parser, "every part of the run (configs refer to it as ${backbone}, ...)")
        parser.add_lightning_class_args(FairnessEvaluator, "evaluator", subclass_mode=True, required=False)

    def before_instantiate_classes(self) -> None:
        """Refuses a shared option that the parts it names do not follow (see the class docstring)."""
        config = self.config.get(str(self.subcommand), self.config)
        model, evaluator = config.get("model") or {}, config.get("evaluator") or {}
        uses = {
            "backbone": [("model.init_args.backbone", model.get("init_args", {}).get("backbone"))],
            "classifier": [
                ("model.init_args.classifier", model.get("init_args", {}).get("classifier")),
                (
                    "evaluator.init_args.classifier",
                    evaluator.get("init_args", {}).get("classifier"),
                ),
            ],
        }
        dataset, data = config.get("dataset"), config.get("data") or {}
        readers = [data, data.get("init_args", {}).get("train_data"), evaluator.get("init_args", {}).get("reference")]
        if dataset is not None and _data_identity(dataset) not in [_data_identity(reader) for reader in readers]:
            raise ValueError(
                "Option 'dataset' is set but neither data, data.init_args.train_data nor "
                "evaluator.init_args.reference reads it (its class and root): this config does not follow 'dataset'"
            )
        for option, places in uses.items():
            value = config.get(option)
            for place, used in places:
                if value is not None and used is not None and used != value:
                    raise ValueError(
                        f"Option '{option}' is {value!r} but {place} is {used!r}: this config does not follow "
                        f"'{option}'; set {place} (or make it ${{{option}}})"
                    )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Trainer:
        """Lightning's trainer, without the top-level ``evaluator`` when a run has none."""
        return super()._instantiate_trainer(config, [callback for callback in callbacks if callback is not None])

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

    def instantiate_classes(self) -> None:
        """Builds the model first, then the callbacks, the data and the trainer."""
        config = self.config.clone()
        subcommand_config = config.get(str(self.subcommand), config)
        parser = self._parser(self.subcommand)
        subcommand_config["model"] = parser.instantiate_classes(Namespace(model=subcommand_config["model"]))["model"]
        self.config_init = self.parser.instantiate_classes(config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with progress logged as lines in place of Lightning's default bar when output is no terminal."""
        callbacks = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        configured = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        trainer = super().instantiate_trainer(**kwargs)  # it adds Lightning's default bar to the configured list
        if not sys.stdout.isatty():
            trainer.callbacks = [
                ProgressLog() if isinstance(callback, ProgressBar) and callback not in configured else callback
                for callback in trainer.callbacks
            ]
        return trainer

    def _check_ckpt_path(self) -> None:
        """Refuses, before anything runs, a ``--ckpt_path`` that is not a checkpoint readable without unpickling."""
        path = self._get(self.config, "ckpt_path")
        if path is not None and str(path) not in SPECIAL_CHECKPOINTS and not str(path).startswith("registry:"):
            read_checkpoint(path, "--ckpt_path")

    before_fit = before_validate = before_test = before_predict = _check_ckpt_path


def _data_identity(data: Any) -> tuple[Any, Any] | None:
    """The class and root of a DataModule's options (what makes two of them read the same images)."""
    if not data or not hasattr(data, "get"):
        return None
    return data.get("class_path"), (data.get("init_args") or {}).get("root")


def build_cli(args: ArgsType = None, run: bool = True) -> LightningCLI:
    """Parses ``args`` (default ``sys.argv[1:]``) into a LightningCLI and, with ``run``, runs its subcommand.

    Any ``LightningModule`` and ``LightningDataModule`` can be named in a config, by full class path or, for
    the package's own classes, by class name. With ``run=False`` there is no subcommand: the config is
    parsed and the trainer, model and datamodule are instantiated for the caller to drive.
    """
    # Interpolations (``${model.init_args.target_distributions.Male}``) are resolved after the command-line
    # overrides (``omegaconf+``), and written from the config's root whatever the subcommand.
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    # ``${dict:${dataset.init_args.sensitive},[0.5,0.5]}``: a mapping keyed by another option's value (OmegaConf
    # interpolates values, never keys), e.g. the target distribution of the dataset's sensitive attribute.
    OmegaConf.register_resolver("dict", lambda key, value: {key: value}, replace=True)
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
    """Runs the command line; ``args`` replaces ``sys.argv[1:]`` (used by in-process tests).

    ``report`` (``lightning-fair report -c report.yaml``) runs every method on one protocol and writes a report
    (see :mod:`lightning_fair.report.command`); the other subcommands are Lightning's.

    An error in what the run was given (a file, an option, an attribute) ends it with one line on standard error
    and exit status 2 (with the environment variable ``LIGHTNING_FAIR_TRACEBACK=1``, with its traceback); any other
    error keeps its traceback. A run stopped by SIGTERM (after the batch in progress,
    everything written so far complete) ends with status 143, as a process killed by the signal would, so that a
    stopped run is never taken for a finished one (Lightning's ``fit`` would exit with 0).
    """
    arguments = list(sys.argv[1:] if args is None else args)
    try:
        if arguments[:1] == ["report"]:
            from lightning_fair.report.command import run_report  # the report runs the CLI itself: import late

            run_report(arguments[1:])
        else:
            build_cli(args)
    except SIGTERMException as stop:
        raise SystemExit(stop.code or TERMINATED_EXIT_STATUS) from None
    except Exception as error:
        message = configuration_error(error)
        if message is None or os.environ.get("LIGHTNING_FAIR_TRACEBACK") == "1":
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(CONFIGURATION_ERROR) from None


def configuration_error(error: BaseException) -> str | None:
    """The message of an error in what the user gave, or ``None`` for anything else (a bug keeps its traceback).

    Such errors are the package's own ``ValueError`` and ``OSError`` (raised where an option, file or attribute is
    checked), also when the config parser wraps them, and the parser's interpolation errors.
    """
    while error is not None:
        if isinstance(error, OmegaConfBaseException) and getattr(error, "full_key", None):
            return _interpolation_message(error)
        if isinstance(error, (ValueError, OSError)) and _raised_in(error, PACKAGE_DIR):
            return str(error)
        if not _raised_in(error, JSONARGPARSE_DIR):
            return None
        error = error.__cause__
    return None


def _raised_in(error: BaseException, folder: Path) -> bool:
    """Whether the innermost Python frame of ``error``'s traceback is in a file under ``folder``."""
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    return Path(traceback.tb_frame.f_code.co_filename).resolve().is_relative_to(folder)


def _interpolation_message(error: OmegaConfBaseException) -> str:
    """``Option <key> refers to <key>, which is not set`` for an interpolation of a missing key."""
    option = _config_key(str(error.full_key))
    resolved = re.search(r"resolved to '([^']+)'", str(error))
    if resolved is None:
        return f"Option {option}: {str(error).splitlines()[0]}"
    return f"Option {option} refers to {_config_key(resolved.group(1))}, which the config does not set"


def _config_key(key: str) -> str:
    """A config key without its subcommand (``test.model.init_args.seed`` -> ``model.init_args.seed``)."""
    first, _, rest = key.partition(".")
    return rest if first in ("fit", "validate", "test", "predict") and rest else key
