"""Writes generated images with their conditions and predicted attributes as resumable records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_fair.classifiers import load_classifier
from lightning_fair.data.generated import (
    IMAGE_FOLDER,
    check_manifest,
    fingerprint,
    from_pixels,
    generation_settings,
    record_path,
    to_pixels,
    write_manifest,
    write_record,
    write_table,
)
from lightning_fair.data.prompt_sets import prompt_of


class GenerationWriter(Callback):
    """Writes each generated sample as one record ``<output_dir>/images/<index>.png``, and ``generations.csv``.

    With a prompt set, each prompt has its folder, ``images/prompt_<p>/<i>.png`` for sample ``i`` of prompt ``p``, and
    each record (and row of ``generations.csv``) holds its prompt.

    A record is the PNG with the sample's index, conditions and predicted attributes in its metadata, written to a
    temporary name and renamed: an interrupted run leaves only complete records (see
    :mod:`lightning_fair.data.generated`). ``generations.csv`` (index, conditions, predicted attributes, sorted by
    index) is rebuilt from every record in the folder at the end of the run. The settings of the run (method and
    its options, weights, sample count, batch size, classifier) are written to ``manifest.json`` when the folder is
    first used; a run with other settings is refused, a rerun with the same settings overwrites the samples it
    generates and keeps those it read back (``GenerationRequests(skip_existing=<output_dir>)`` resumes).

    Args:
        output_dir: destination folder.
        classifier: optional attribute classifier (checkpoint, folder or shipped name) whose predictions
            are added to the records and the CSV.
    """

    def __init__(self, output_dir: str, classifier: str | None = None) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.classifier_reference = classifier
        self.classifier = None if classifier is None else load_classifier(classifier)

    def _settings(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        requests = trainer.datamodule
        settings = generation_settings(
            pl_module, getattr(requests, "num_samples", None), getattr(requests, "batch_size", None)
        )
        weights = None if self.classifier is None else fingerprint(self.classifier)
        return settings | {"classifier": self.classifier_reference, "classifier_weights": weights}

    def _start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.classifier is not None:
            self.classifier.to(pl_module.device)
            self.classifier.expect_generated(pl_module)
        settings = self._settings(trainer, pl_module)
        if trainer.is_global_zero:
            (self.output_dir / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
            for temporary in self.output_dir.rglob(".*.tmp"):  # left by a killed run
                temporary.unlink()
            write_manifest(self.output_dir, settings)
        trainer.strategy.barrier()
        check_manifest(self.output_dir, settings)

    on_test_start = on_predict_start = _start

    def _write_batch(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any) -> None:
        indices = outputs["index"].tolist()
        prompt_set = getattr(pl_module, "prompt_set", None)
        per_prompt = prompt_set is not None and len(prompt_set) > 1
        # Generated samples are (re)written; read-back ones only if they come from another folder.
        positions = [
            position
            for position, index in enumerate(indices)
            if not outputs.get("read_back", False) or not record_path(self.output_dir, index, per_prompt).exists()
        ]
        if not positions:
            return
        pixels = to_pixels(outputs["images"][positions])
        conditions = {name: values[positions].tolist() for name, values in outputs.get("conditions", {}).items()}
        predicted: dict[str, list] = {}
        if self.classifier is not None:
            with torch.no_grad():  # on the stored images, so that the records describe themselves
                predictions = self.classifier.predict(from_pixels(pixels).to(pl_module.device)).cpu()
            predicted = {
                name: predictions[:, column].tolist() for column, name in enumerate(self.classifier.attributes)
            }
        prompts = prompt_of(torch.tensor([indices[position] for position in positions])).tolist()
        for row, position in enumerate(positions):
            write_record(
                self.output_dir,
                indices[position],
                pixels[row],
                {name: values[row] for name, values in conditions.items()},
                {name: values[row] for name, values in predicted.items()},
                None if prompt_set is None else prompt_set.prompts[prompts[row]],
                per_prompt,
            )

    on_test_batch_end = on_predict_batch_end = _write_batch

    def _finish(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            write_table(self.output_dir)

    on_test_epoch_end = on_predict_epoch_end = _finish
