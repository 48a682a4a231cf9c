"""The ``lightning-fair`` entry point: Lightning's subcommands and ``report``, one-line errors."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import jsonargparse
from lightning.pytorch.cli import ArgsType
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf.errors import OmegaConfBaseException

import lightning_fair
from lightning_fair.cli import build_cli
from lightning_fair.report.command import run_report
from lightning_fair.utils.preemption import TERMINATED_EXIT_STATUS

CONFIGURATION_ERROR = 2  # exit status of a run refused for what it was given (as for a command-line error)
PACKAGE_DIR = Path(lightning_fair.__file__).resolve().parent
JSONARGPARSE_DIR = Path(jsonargparse.__file__).resolve().parent
SUBCOMMANDS = {
    "fit": "train a method's module (or calibrate it), an attribute classifier or a backbone",
    "validate": "run the validation split",
    "test": "generate images and evaluate them (metrics.json, metrics.md, a sample grid)",
    "predict": "generate images and write them (GenerationWriter)",
    "report": "run several methods of one setup on one protocol: results.json, report.md, report.html",
}


def usage() -> str:
    """What ``lightning-fair --help`` prints: every subcommand."""
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name.ljust(width)}  {text}" for name, text in SUBCOMMANDS.items()]
    return "\n".join(
        [
            f"usage: lightning-fair [-h] {{{','.join(SUBCOMMANDS)}}} ...",
            "",
            "Debiasing methods over a frozen diffusion model, as Lightning modules.",
            "",
            "subcommands:",
            *lines,
            "",
            "A run combines a setup and a method config, e.g.",
            "  lightning-fair test -c configs/setups/synthetic_faces.yaml -c configs/methods/plain.yaml",
            "See `lightning-fair <subcommand> --help` for the options of each.",
        ]
    )


def main(args: ArgsType = None) -> None:
    """Runs the command line; ``args`` replaces ``sys.argv[1:]`` (used by in-process tests).

    ``report`` (``lightning-fair report -c configs/report/synthetic_faces.yaml``) runs several methods on one protocol
    and writes a report (see :mod:`lightning_fair.report.command`); the other subcommands are Lightning's.

    An error in what the run was given (a file, an option, an attribute) ends it with one line on standard error
    and exit status 2 (with the environment variable ``LIGHTNING_FAIR_TRACEBACK=1``, with its traceback); any other
    error keeps its traceback. A run stopped by SIGTERM (after the batch in progress,
    everything written so far complete) ends with status 143, as a process killed by the signal would, so that a
    stopped run is never taken for a finished one (Lightning's ``fit`` would exit with 0).
    """
    arguments = list(sys.argv[1:] if args is None else args)
    if not arguments or arguments[0] in ("-h", "--help"):
        print(usage())
        return
    try:
        if arguments[0] == "report":
            run_report(arguments[1:])
        else:
            build_cli(arguments)
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
