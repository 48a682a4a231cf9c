"""The check of a pretrained backbone at the end of its fit: is the exported model usable?"""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_fair.checks import CHECK_FILE, BackboneThresholds, check_backbone
from lightning_fair.classifiers import AttributeClassifier, load_classifier
from lightning_fair.data.base import AttributeDataModule
from lightning_fair.utils.files import write_text_atomically


class BackboneCheck(Callback):
    """Checks the model a pretraining fit exported (:func:`~lightning_fair.checks.check_backbone`).

    Class-conditional samples labelled by ``classifier`` (agreement against chance, confidence against the
    validation images') and ``fid_cls`` against the validation images beside the floor of the test images. The
    verdict goes to the log (a warning when the model is not usable) and to ``check.json`` beside the model.

    Args:
        classifier: the attribute classifier of the data (checkpoint, folder or shipped name).
        samples_per_class: samples per class of the model's condition.
        steps: denoising steps of the samples.
        batch_size: samples per batch.
        thresholds: when the model is usable.
    """

    def __init__(
        self,
        classifier: str,
        samples_per_class: int = 256,
        steps: int = 25,
        batch_size: int = 128,
        thresholds: BackboneThresholds | None = None,
    ) -> None:
        if samples_per_class < 1 or steps < 1 or batch_size < 1:
            raise ValueError(
                "Options 'samples_per_class', 'steps' and 'batch_size' of BackboneCheck must be positive, got "
                f"{samples_per_class}, {steps}, {batch_size}"
            )
        self.classifier = classifier
        self.samples_per_class = samples_per_class
        self.steps = steps
        self.batch_size = batch_size
        self.thresholds = thresholds or BackboneThresholds()
        self._classifier: AttributeClassifier | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Loads the classifier when the fit starts: a missing one is an error now, not after the training."""
        if stage == "fit" and self._classifier is None:
            self._classifier = load_classifier(self.classifier)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Checks the model in the module's ``output_dir`` (written at the end of training) on the fit's data."""
        if not trainer.is_global_zero:
            return
        folder, data = getattr(pl_module, "output_dir", None), trainer.datamodule
        if folder is None or not isinstance(data, AttributeDataModule):
            raise ValueError(
                "BackboneCheck checks the model a pretraining fit exports (its 'output_dir') on the fit's image "
                f"data; {type(pl_module).__name__} on {type(data).__name__} has neither"
            )
        verdict = check_backbone(
            str(folder),
            self._classifier or load_classifier(self.classifier),
            data,
            samples_per_class=self.samples_per_class,
            steps=self.steps,
            batch_size=self.batch_size,
            thresholds=self.thresholds,
            device=pl_module.device,
        )
        record = {**verdict.as_dict(), "classifier": self.classifier, "steps": self.steps}
        write_text_atomically(Path(folder) / CHECK_FILE, json.dumps(record, indent=2) + "\n")
        (rank_zero_info if verdict.usable else rank_zero_warn)(verdict.summary())
