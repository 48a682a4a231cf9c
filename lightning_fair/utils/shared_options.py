"""The options that name what every part of a run (or every run of a report) shares: model, classifier, data."""

from __future__ import annotations

from jsonargparse import ArgumentParser

from lightning_fair.data.base import AttributeDataModule


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
