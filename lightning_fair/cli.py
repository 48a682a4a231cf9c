"""The LightningCLI of ``lightning-fair fit|validate|test|predict``: setup x method configs, shared options."""

from __future__ import annotations

import sys
import warnings
from typing import Any

from jsonargparse import ArgumentParser, Namespace, set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import OmegaConf

import lightning_fair  # the submodule imports below register the classes for short names in configs
import lightning_fair.callbacks
import lightning_fair.classifiers
import lightning_fair.data
import lightning_fair.methods
import lightning_fair.pretraining
from lightning_fair.callbacks import BackboneCheck, FairnessEvaluator, FitBudgetCheck
from lightning_fair.callbacks.progress_log import ProgressLog
from lightning_fair.data.base import AttributeDataModule
from lightning_fair.method_settings import with_method_settings
from lightning_fair.methods import Prompts
from lightning_fair.models import read_checkpoint
from lightning_fair.utils.distributed import DDP_START_METHODS, CalibrationAwareDDPStrategy

SPECIAL_CHECKPOINTS = ("last", "best", "hpc", "registry")


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

    A run combines a setup and a method config (``-c configs/setups/<setup>.yaml -c configs/methods/<method>.yaml``).
    Top-level options name what the parts of a run share, so that a setup states each once and the method config
    interpolates it (``${backbone}``, ``${evaluator.init_args.sensitive}``): ``backbone``, ``classifier``, ``dataset``
    (an image DataModule, not instantiated by itself), ``prompts`` (of a text-to-image backbone), ``evaluator`` (the
    :class:`~lightning_fair.callbacks.FairnessEvaluator`, added to the trainer's callbacks, set from the command line
    as ``--evaluator.classifier``), ``backbone_check`` (the :class:`~lightning_fair.callbacks.BackboneCheck` of a
    pretraining run, ``--backbone_check null`` skips it), ``name`` (the run's name, set by the method config) and
    ``method_settings`` (the setup's values for each method, see :mod:`lightning_fair.method_settings`). A shared
    option that is set but that the config's parts do not follow is refused, so that a run never silently uses another
    model or classifier than the one given.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The shared top-level options (see the class docstring)."""
        add_shared_arguments(parser, "every part of the run (configs refer to it as ${backbone}, ...)")
        parser.add_argument("--prompts", type=Prompts | None, default=None, help="the prompts of a text-to-image model")
        parser.add_argument(
            "--name", type=str, default="run", help="the run's name: its folder, its key in method_settings"
        )
        parser.add_argument(
            "--method_settings",
            type=dict[str, dict[str, Any]] | None,
            default=None,
            help="the setup's settings of each method, by name (applied after the method's config)",
        )
        parser.add_lightning_class_args(FairnessEvaluator, "evaluator", subclass_mode=True, required=False)
        parser.add_lightning_class_args(BackboneCheck, "backbone_check", subclass_mode=True, required=False)

    def before_instantiate_classes(self) -> None:
        """Refuses a shared option that the parts it names do not follow; Lightning's DDP names run the framework's.

        ``--trainer.strategy ddp`` (and ``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``) runs
        :class:`~lightning_fair.utils.distributed.CalibrationAwareDDPStrategy` with the same start method, so that a
        training-free method's ``fit`` runs on many processes; Lightning's own registry is left as it is.
        """
        config = self.config.get(str(self.subcommand), self.config)
        trainer = config.get("trainer") or {}
        strategy = trainer.get("strategy")
        if isinstance(strategy, str) and strategy in DDP_START_METHODS:
            trainer["strategy"] = CalibrationAwareDDPStrategy(start_method=DDP_START_METHODS[strategy])
        model, evaluator = config.get("model") or {}, config.get("evaluator") or {}
        check = config.get("backbone_check") or {}
        uses = {
            "backbone": [("model.init_args.backbone", model.get("init_args", {}).get("backbone"))],
            "classifier": [
                ("model.init_args.classifier", model.get("init_args", {}).get("classifier")),
                ("evaluator.init_args.classifier", evaluator.get("init_args", {}).get("classifier")),
                ("backbone_check.init_args.classifier", check.get("init_args", {}).get("classifier")),
            ],
        }
        dataset, data = config.get("dataset"), config.get("data") or {}
        readers = [data, data.get("init_args", {}).get("train_data"), evaluator.get("init_args", {}).get("reference")]
        images = [identity for identity in map(_data_identity, readers) if identity is not None and identity[1]]
        if dataset is not None and images and _data_identity(dataset) not in images:
            raise ValueError(
                "Option 'dataset' is set but data, data.init_args.train_data and evaluator.init_args.reference read "
                "other images (their class and root): this config does not follow 'dataset'"
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
        """Lightning's trainer, without the top-level ``evaluator`` or ``backbone_check`` when a run has none."""
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
        """The trainer, with progress logged as lines in place of Lightning's default bar when output is no terminal.

        Every fit ends with a line on its budget (:class:`~lightning_fair.callbacks.FitBudgetCheck`): a fit that
        ``max_time`` stopped before its ``max_steps`` warns loudly.
        """
        callbacks = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        configured = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        trainer = super().instantiate_trainer(**kwargs)  # it adds Lightning's default bar to the configured list
        if not sys.stdout.isatty():
            trainer.callbacks = [
                ProgressLog() if isinstance(callback, ProgressBar) and callback not in configured else callback
                for callback in trainer.callbacks
            ]
        if not any(isinstance(callback, FitBudgetCheck) for callback in trainer.callbacks):
            trainer.callbacks.append(FitBudgetCheck())
        return trainer

    def _check_ckpt_path(self) -> None:
        """Refuses, before anything runs, a ``--ckpt_path`` that is not a checkpoint readable without unpickling."""
        path = self._get(self.config, "ckpt_path")
        if path is not None and str(path) not in SPECIAL_CHECKPOINTS and not str(path).startswith("registry:"):
            read_checkpoint(path, "--ckpt_path")

    def before_fit(self) -> None:
        """Checks ``--ckpt_path``; ``last`` resumes a method's fit from its own ``last.ckpt`` (if there is one).

        A method supplies its checkpoint callback when the fit starts, after Lightning has looked for ``last`` among
        the trainer's callbacks, so the CLI names the file itself.
        """
        self._check_ckpt_path()
        config = self.config_init.get(str(self.subcommand), self.config_init)
        if config.get("ckpt_path") != "last" or not hasattr(self.model, "checkpoint_folder"):
            return
        last = self.model.checkpoint_folder(self.trainer.default_root_dir) / "last.ckpt"
        config["ckpt_path"] = str(last) if last.is_file() else None
        if not last.is_file():
            rank_zero_warn(f"--ckpt_path last: no {last} yet, so the fit starts from the beginning")

    before_validate = before_test = before_predict = _check_ckpt_path


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
    if args is None or isinstance(args, list):
        args = with_method_settings(list(sys.argv[1:] if args is None else args))
    # Interpolations (``${model.init_args.target_distributions.Male}``) are resolved after the command-line
    # overrides (``omegaconf+``), and written from the config's root whatever the subcommand.
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    # ``${dict:${evaluator.init_args.sensitive},[0.5,0.5]}``: a mapping keyed by another option's value (OmegaConf
    # interpolates values, never keys), e.g. the target distribution of the dataset's sensitive attribute.
    OmegaConf.register_resolver("dict", lambda key, value: {key: value}, replace=True)
    with warnings.catch_warnings():
        # ``args`` holds the command line itself (with the setup's method settings): not a second one.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
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


def add_shared_arguments(parser: ArgumentParser, whose: str) -> None:
    """Adds ``--backbone``, ``--classifier`` and ``--dataset`` (not instantiated), each ``None`` by default.

    Args:
        parser: the command line or report parser.
        whose: who uses them, for the help (e.g. ``every part of the run``).
    """
    parser.add_argument("--backbone", type=str | None, default=None, help=f"the diffusion model of {whose}")
    parser.add_argument("--classifier", type=str | None, default=None, help=f"the attribute classifier of {whose}")
    parser.add_subclass_arguments(
        AttributeDataModule, "dataset", required=False, instantiate=False, help=f"the image data of {whose}"
    )
