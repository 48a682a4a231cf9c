"""Writes generated images and a CSV of their conditions and predicted attributes, resumably."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image

from lightning_fair.classifiers import load_classifier
from lightning_fair.data.requests import IMAGE_FOLDER, image_name


class GenerationWriter(Callback):
    """Writes each generated image as ``<output_dir>/images/<index>.png`` and a CSV per process.

    Every file is written to a temporary name and renamed, so an interrupted run never leaves a partial
    file; images that already exist are skipped, not overwritten, so a rerun resumes (pair it with
    ``GenerationRequests(skip_existing=...)`` to skip generating them too). Each process keeps
    ``generations.rank<r>.csv`` (index, conditions, predicted attributes); at the end process 0 merges
    every row into ``generations.csv``, sorted by index.

    Args:
        output_dir: destination folder.
        classifier: optional attribute classifier (checkpoint, folder or shipped name) whose predictions
            are added to the CSV.
    """

    def __init__(self, output_dir: str, classifier: str | None = None) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.classifier = None if classifier is None else load_classifier(classifier)
        self.rows: dict[int, dict[str, Any]] = {}

    def _rank_file(self, rank: int) -> Path:
        return self.output_dir / f"generations.rank{rank}.csv"

    def _start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        (self.output_dir / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
        if self.classifier is not None:
            self.classifier.to(pl_module.device)
        self.rows = {int(row["index"]): row for row in _read_rows(self._rank_file(trainer.global_rank))}

    on_test_start = on_predict_start = _start

    def _write_batch(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any) -> None:
        images, indices = outputs["images"], outputs["index"].tolist()
        if not indices:
            return
        rows = [{"index": index} for index in indices]
        for name, values in outputs.get("conditions", {}).items():
            for row, value in zip(rows, values.tolist(), strict=True):
                row[f"condition_{name}"] = value
        if self.classifier is not None:
            with torch.no_grad():
                predictions = self.classifier.predict(images)
            for column, name in enumerate(self.classifier.attributes):
                for row, value in zip(rows, predictions[:, column].tolist(), strict=True):
                    row[f"predicted_{name}"] = value
        pixels = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        for index, image, row in zip(indices, pixels, rows, strict=True):
            path = self.output_dir / IMAGE_FOLDER / image_name(index)
            if not path.exists():
                temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
                Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy()).save(temporary, format="PNG")
                temporary.replace(path)
            self.rows[index] = row
        _write_rows(self._rank_file(trainer.global_rank), list(self.rows.values()))

    on_test_batch_end = on_predict_batch_end = _write_batch

    def _merge(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            merged: dict[int, dict[str, Any]] = {}
            for path in sorted(self.output_dir.glob("generations.rank*.csv")):
                merged.update({int(row["index"]): row for row in _read_rows(path)})
            _write_rows(self.output_dir / "generations.csv", [merged[index] for index in sorted(merged)])

    on_test_epoch_end = on_predict_epoch_end = _merge


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    temporary.replace(path)
