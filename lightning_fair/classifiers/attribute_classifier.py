"""A multi-attribute image classifier on a timm backbone."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms.v2.functional import gaussian_blur

from lightning_fair.classifiers.view import ClassifierContract
from lightning_fair.data.base import VIEW_TOLERANCE, AttributeDataModule
from lightning_fair.diffusion.seeding import seed_of
from lightning_fair.models import read_json
from lightning_fair.utils.options import check_ranges


class AttributeClassifier(ClassifierContract, LightningModule):
    """One softmax head per attribute on a shared timm feature extractor.

    Trained on batches of the framework's contract (``image`` in [-1, 1], ``attributes`` B x A); it labels
    real and generated images, gives pseudo-labels to methods that need them and its penultimate features
    serve as the feature space of the ``fid_cls``/``kid_cls`` metrics. Training adds Gaussian noise and
    blur to a random part of each batch so that imperfect generated samples are labelled reliably.

    The classifier carries the view it was trained on: ``center_crop_fraction``, the side of the centred square
    crop of the source images as a fraction of their shorter side (read from the training DataModule at ``fit``),
    and ``image_size``. Whoever feeds it declares the view of its images with :meth:`expect_inputs`; every image
    is then cropped to the classifier's view and resized before it is classified, or refused when that cannot be
    done (the images show less than the classifier saw, or their view is unknown and the classifier saw a crop).

    Args:
        attributes: attribute names, in the order of the batch's ``attributes`` columns.
        num_classes: classes per attribute (one number for all, or one per attribute).
        model_name: timm architecture (any ``timm.list_models()`` name; built without a classifier head).
        weights: optional local file of timm weights to start from (never downloaded). Only used to
            initialise training: checkpoints hold the trained weights.
        image_size: input resolution; images of another size are resized to it.
        center_crop_fraction: the view of the source images it was trained on (``None``: taken from the training
            data at ``fit``; a classifier never fitted on such data is taken to have seen whole images).
        learning_rate: AdamW learning rate (one-cycle schedule over the run).
        weight_decay: AdamW weight decay.
        augment_probability: fraction of each training batch that gets noise, and independently blur.
        max_noise_std: largest standard deviation of the added noise (images span [-1, 1]).
        max_blur_sigma: largest sigma of the Gaussian blur, in pixels.
        seed: seed of the augmentation, which depends only on ``(seed, epoch, batch)``: a resumed fit draws what
            the uninterrupted one would.
    """

    def __init__(
        self,
        attributes: list[str],
        num_classes: int | list[int] = 2,
        model_name: str = "regnetx_002",
        weights: str | None = None,
        image_size: int = 32,
        center_crop_fraction: float | None = None,
        learning_rate: float = 3e-3,
        weight_decay: float = 0.05,
        augment_probability: float = 0.5,
        max_noise_std: float = 0.3,
        max_blur_sigma: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        classes = [num_classes] * len(attributes) if isinstance(num_classes, int) else list(num_classes)
        if len(classes) != len(attributes):
            raise ValueError(
                f"Option 'num_classes' has {len(classes)} entries for {len(attributes)} attributes {attributes}"
            )
        if min(classes, default=2) < 2:
            raise ValueError(f"Option 'num_classes' must be at least 2 per attribute, got {classes}")
        check_ranges(
            positive={
                "image_size": image_size,
                "learning_rate": learning_rate,
                "center_crop_fraction": center_crop_fraction,
            },
            non_negative={
                "weight_decay": weight_decay,
                "max_noise_std": max_noise_std,
                "max_blur_sigma": max_blur_sigma,
            },
        )
        if not 0 <= augment_probability <= 1:
            raise ValueError(f"Option 'augment_probability' must lie in [0, 1], got {augment_probability}")
        self.save_hyperparameters()
        # The weights file only initialises training; a checkpoint must load without it.
        self.hparams["weights"] = None
        self.attributes = list(attributes)
        self.num_classes = classes
        self.reference: str | None = None  # where it was loaded from (set by load_classifier), for messages
        self.init_view()
        self.backbone = self._build_backbone(model_name, weights)
        self.heads = nn.ModuleDict(
            {
                name: nn.Linear(self.backbone.num_features, count)
                for name, count in zip(attributes, classes, strict=True)
            }
        )
        self.val_accuracy = self._accuracy_metrics()
        self.test_accuracy = self._accuracy_metrics()
        self.val_mean_accuracy = MeanMetric()
        self.test_mean_accuracy = MeanMetric()

    def save_pretrained(self, folder: str | Path, half_precision: bool = True) -> Path:
        """Writes ``config.json`` (constructor arguments) and ``model.safetensors`` (weights) into ``folder``.

        Args:
            folder: destination, created if needed.
            half_precision: store floating-point weights as float16 (half the size; loaded back as float32).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            name: tensor.half() if half_precision and tensor.is_floating_point() else tensor
            for name, tensor in self.state_dict().items()
        }
        save_file({name: tensor.contiguous() for name, tensor in state.items()}, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(dict(self.hparams), indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> AttributeClassifier:
        """Loads a classifier written by :meth:`save_pretrained` (in eval mode)."""
        folder = Path(folder)
        for name in ("config.json", "model.safetensors"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"'{folder}' is not an attribute-classifier folder: missing {name}")
        options = read_json(folder / "config.json")
        if options is None:
            raise ValueError(f"'{folder / 'config.json'}' is not a JSON object")
        try:
            state = load_file(folder / "model.safetensors")
        except Exception as error:  # a damaged file: the library's message does not name it
            raise ValueError(f"'{folder / 'model.safetensors'}' cannot be read ({type(error).__name__})") from None
        return cls.from_state(options, state, f"'{folder}'")

    @classmethod
    def from_state(cls, options: dict[str, Any], state: dict[str, Tensor], source: str) -> AttributeClassifier:
        """A classifier (in eval mode) from its constructor options and weights, read from ``source`` (for errors).

        Options starting with ``_`` (what the command line adds, e.g. ``_class_path``) are left out.
        """
        options = {name: value for name, value in options.items() if not name.startswith("_")}
        unknown = sorted(set(options) - set(inspect.signature(cls).parameters))
        if "attributes" not in options or unknown:
            raise ValueError(
                f"{source} does not hold the options of an AttributeClassifier (no 'attributes', or unknown ones: "
                f"{unknown})"
            )
        classifier = cls(**options)
        state = {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state.items()}
        try:
            classifier.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(
                f"The weights in {source} do not fit its options (model_name {options.get('model_name')!r}, "
                f"attributes {options['attributes']})"
            ) from error
        return classifier.eval()

    @staticmethod
    def _build_backbone(model_name: str, weights: str | None) -> nn.Module:
        if model_name not in timm.list_models():
            raise ValueError(f"Option 'model_name': unknown timm architecture {model_name!r}")
        if weights is None:
            return timm.create_model(model_name, pretrained=False, num_classes=0)
        if not Path(weights).is_file():
            raise FileNotFoundError(f"Option 'weights': no file at '{weights}'")
        return timm.create_model(
            model_name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}, num_classes=0
        )

    def _accuracy_metrics(self) -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                name: MulticlassAccuracy(count, average="micro")
                for name, count in zip(self.attributes, self.num_classes, strict=True)
            }
        )

    @property
    def feature_dim(self) -> int:
        """Size of the penultimate features."""
        return int(self.backbone.num_features)

    @property
    def center_crop_fraction(self) -> float:
        """The view it was trained on: side of the centred square crop over the source images' shorter side."""
        return self.hparams["center_crop_fraction"] or 1.0

    @property
    def input_size(self) -> int:
        """The side of the images its network takes."""
        return int(self.hparams["image_size"])

    def features(self, images: Tensor) -> Tensor:
        """Penultimate features, shape ``(B, feature_dim)``, of images in [-1, 1] (see :meth:`to_view`)."""
        return self.backbone(self.to_view(images))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Logits per attribute of images in [-1, 1]."""
        features = self.features(images)
        return {name: head(features) for name, head in self.heads.items()}

    def predict_proba(self, images: Tensor) -> dict[str, Tensor]:
        """Class probabilities per attribute, each ``(B, num_classes)``."""
        return {name: logits.softmax(dim=-1) for name, logits in self(images).items()}

    def setup(self, stage: str) -> None:
        """Takes the data's view as its own unless recorded, refuses another one in ``fit``, expects it as input."""
        data = self.trainer.datamodule
        if not isinstance(data, AttributeDataModule):
            return
        view, recorded = data.center_crop_fraction, self.hparams["center_crop_fraction"]
        if recorded is None:
            self.hparams["center_crop_fraction"] = view
        elif stage == "fit" and abs(recorded - view) > VIEW_TOLERANCE * view:
            raise ValueError(
                f"Option 'center_crop_fraction' ({recorded}) differs from the view of the training data in "
                f"'{data.root}' ({view:.4g}: center_crop {data.center_crop}); leave it unset to take the data's"
            )
        self.expect_inputs(view, f"the images of '{data.root}'")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Takes the view its weights were trained on from the checkpoint (a config does not know it)."""
        recorded = checkpoint.get("hyper_parameters", {}).get("center_crop_fraction")
        if recorded is None:
            return
        resumed = self._trainer is not None and self._trainer.state.fn == "fit"
        if resumed and abs(recorded - self.center_crop_fraction) > VIEW_TOLERANCE * recorded:
            raise ValueError(
                f"The checkpoint was trained on a centre crop of {recorded:.4g} of the source images but the training "
                f"data shows {self.center_crop_fraction:.4g}: set the data's center_crop back to continue it"
            )
        self.hparams["center_crop_fraction"] = recorded

    def augment(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Adds noise and blur to random parts of a batch (the robustness augmentation of training).

        Every random number comes from ``generator`` (a CPU generator; the global one if ``None``).
        """

        def uniform(*shape: int) -> Tensor:
            return torch.rand(shape, generator=generator).to(images.device)

        probability = self.hparams["augment_probability"]
        shape = (images.shape[0], 1, 1, 1)
        max_sigma = self.hparams["max_blur_sigma"]
        if max_sigma > 0:
            sigma = max_sigma * (0.2 + 0.8 * float(uniform()))
            blurred = gaussian_blur(images, kernel_size=[5, 5], sigma=[sigma, sigma])
            images = torch.where(uniform(*shape) < probability, blurred, images)
        noise_std = uniform(*shape) * self.hparams["max_noise_std"]
        noise_std = noise_std * (uniform(*shape) < probability)
        return images + noise_std * torch.randn(images.shape, generator=generator).to(images.device)

    def _loss(self, logits: dict[str, Tensor], labels: Tensor) -> Tensor:
        losses = [F.cross_entropy(logits[name], labels[:, column]) for column, name in enumerate(self.attributes)]
        return torch.stack(losses).mean()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy summed over heads, on augmented images.

        The augmentation draws from ``(seed, epoch, first sample of the batch)`` alone, so a resumed fit (whose
        batches are those of the uninterrupted one) augments them alike.
        """
        first = int(batch["index"][0]) if len(batch["index"]) else 0
        generator = torch.Generator().manual_seed(seed_of(self.hparams["seed"], self.current_epoch, first))
        logits = self(self.augment(batch["image"], generator))
        loss = self._loss(logits, batch["attributes"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> None:
        accuracy, mean_accuracy = getattr(self, f"{stage}_accuracy"), getattr(self, f"{stage}_mean_accuracy")
        logits = self(batch["image"])
        labels = batch["attributes"]
        self.log(f"{stage}/loss", self._loss(logits, labels), sync_dist=True)
        correct = []
        for column, name in enumerate(self.attributes):
            accuracy[name].update(logits[name], labels[:, column])
            self.log(f"{stage}/acc_{name}", accuracy[name])
            correct.append(logits[name].argmax(-1) == labels[:, column])
        mean_accuracy.update(torch.stack(correct, dim=1).float().mean(dim=1))
        self.log(f"{stage}/acc_mean", mean_accuracy, prog_bar=stage == "val")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Per-attribute accuracy on the val split."""
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Per-attribute accuracy on the test split."""
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Predicted classes and probabilities of a batch."""
        probabilities = self.predict_proba(batch["image"])
        predictions = torch.stack([p.argmax(-1) for p in probabilities.values()], dim=1)
        return {"index": batch["index"], "predictions": predictions, "probabilities": probabilities}

    def configure_optimizers(self) -> dict:
        """AdamW with a one-cycle learning-rate schedule over the whole run."""
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams["learning_rate"], weight_decay=self.hparams["weight_decay"]
        )
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=self.hparams["learning_rate"],
            total_steps=int(self.trainer.estimated_stepping_batches),
            pct_start=0.15,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
