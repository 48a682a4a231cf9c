"""Per-split artifacts of a fit keyed by dataset index (InvDiff's groups, Self-Guidance's clusters), made once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_fair.data.base import AttributeDataModule
from lightning_fair.data.dataset import AttributeImageDataset
from lightning_fair.data.keyed_rows import KeyedRows, split_fingerprint
from lightning_fair.methods.lifecycle.diagnostics import report_path, write_report
from lightning_fair.utils.run_folder import run_folder


@dataclass(frozen=True)
class SplitArtifact:
    """Rows made from one split of the training images, one per image, kept in a file keyed by dataset index.

    The file records what the rows were made from (the backbone, the data, a fingerprint of the split's images, the
    method's settings) and is checked against it when it is read back; a JSON report of how they were made (never
    used in training) is written beside it.

    Attributes:
        kind: what the rows are (``groups``, ``clusters``), in messages and in the file check.
        option: the option that names the file (``groups_file``).
        default_file: the file's name in the run's log folder when the option is unset.
        split: the split the rows are made from.
    """

    kind: str
    option: str
    default_file: str
    split: str = "train"

    def path(self, given: str | None, trainer: Trainer) -> Path:
        """The option's file, or :attr:`default_file` in the run's log folder."""
        return Path(given) if given else run_folder(trainer) / self.default_file

    def report(self, given: str | None, trainer: Trainer) -> Path:
        """The JSON report beside the file."""
        return report_path(self.path(given, trainer))

    def provenance(self, backbone: str, data: AttributeDataModule, **settings: str) -> dict[str, str]:
        """What the rows of ``data``'s split are tied to: the backbone, the data and ``settings``."""
        rows = data.split_indices(self.split)
        return {
            "backbone": backbone,
            "dataset": str(data.root),
            "split": self.split,
            "fingerprint": split_fingerprint([data.table.image_paths[row] for row in rows], data.root),
            **settings,
        }

    def dataset(self, data: AttributeDataModule) -> AttributeImageDataset:
        """The split's images in dataset order with their indices, without random transforms."""
        rows = data.split_indices(self.split)
        return AttributeImageDataset(
            [data.table.image_paths[row] for row in rows], data.table.attributes[rows], rows, data.transform(False)
        )

    def read(self, path: Path, provenance: dict[str, str]) -> KeyedRows:
        """The rows of ``path``, refused unless they were made from ``provenance``."""
        rows = KeyedRows.load(path, self.option, self.kind)
        rows.check(path, self.option, self.kind, provenance)
        return rows

    def load_or_make(
        self,
        method: str,
        path: Path,
        provenance: dict[str, str],
        make: Callable[[], tuple[KeyedRows, dict[str, Any], str]],
        trainer: Trainer,
    ) -> KeyedRows:
        """The rows read back from ``path``, or made by ``make`` and written by rank zero with their report.

        ``make`` returns the rows, their report and a line for the log, logged once every process has the file.
        """
        if path.exists():
            rows = self.read(path, provenance)
            rank_zero_info(f"{method}: read the {self.kind} of {len(rows.indices)} images ({path})")
            return rows
        rows, report, summary = make()
        if trainer.is_global_zero:
            rows.save(path)
            write_report(path, report)
        trainer.strategy.barrier()
        rank_zero_info(summary)
        return rows
