"""A multi-attribute image classifier on a timm backbone."""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms.v2.functional import gaussian_blur


class AttributeClassifier(LightningModule):
    """One softmax head per attribute on a shared timm feature extractor.

    Trained on batches of the framework's contract (``image`` in [-1, 1], ``attributes`` B x A); it labels
    real and generated images, gives pseudo-labels to methods that need them and its penultimate features
    serve as the feature space of the ``fid_cls``/``kid_cls`` metrics. Training adds Gaussian noise and
    blur to a random part of each batch so that imperfect generated samples are labelled reliably.

    Args:
        attributes: attribute names, in the order of the batch's ``attributes`` columns.
        num_classes: classes per attribute (one number for all, or one per attribute).
        model_name: timm architecture (any ``timm.list_models()`` name; built without a classifier head).
        weights: optional local file of timm weights to start from (never downloaded). Only used to
            initialise training: checkpoints hold the trained weights.
        image_size: input resolution; images of another size are resized to it.
        learning_rate: AdamW learning rate (one-cycle schedule over the run).
        weight_decay: AdamW weight decay.
        augment_probability: fraction of each training batch that gets noise, and independently blur.
        max_noise_std: largest standard deviation of the added noise (images span [-1, 1]).
        max_blur_sigma: largest sigma of the Gaussian blur, in pixels.
    """

    def __init__(
        self,
        attributes: list[str],
        num_classes: int | list[int] = 2,
        model_name: str = "regnetx_002",
        weights: str | None = None,
        image_size: int = 32,
        learning_rate: float = 3e-3,
        weight_decay: float = 0.05,
        augment_probability: float = 0.5,
        max_noise_std: float = 0.3,
        max_blur_sigma: float = 1.0,
    ) -> None:
        super().__init__()
        classes = [num_classes] * len(attributes) if isinstance(num_classes, int) else list(num_classes)
        if len(classes) != len(attributes):
            raise ValueError(
                f"Option 'num_classes' has {len(classes)} entries for {len(attributes)} attributes {attributes}"
            )
        if min(classes, default=2) < 2:
            raise ValueError(f"Option 'num_classes' must be at least 2 per attribute, got {classes}")
        self.save_hyperparameters()
        # The weights file only initialises training; a checkpoint must load without it.
        self.hparams["weights"] = None
        self.attributes = list(attributes)
        self.num_classes = classes
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
        classifier = cls(**json.loads((folder / "config.json").read_text()))
        state = {
            name: tensor.float() if tensor.is_floating_point() else tensor
            for name, tensor in load_file(folder / "model.safetensors").items()
        }
        classifier.load_state_dict(state)
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

    def attribute_index(self, name: str) -> int:
        """Position of an attribute among the heads, or a ``ValueError`` listing the known names."""
        if name not in self.attributes:
            raise ValueError(f"The classifier has no attribute {name!r}; it predicts {self.attributes}")
        return self.attributes.index(name)

    def _resize(self, images: Tensor) -> Tensor:
        size = self.hparams["image_size"]
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return images

    def features(self, images: Tensor) -> Tensor:
        """Penultimate features, shape ``(B, feature_dim)``, of images in [-1, 1]."""
        return self.backbone(self._resize(images))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Logits per attribute of images in [-1, 1]."""
        features = self.features(images)
        return {name: head(features) for name, head in self.heads.items()}

    def predict_proba(self, images: Tensor) -> dict[str, Tensor]:
        """Class probabilities per attribute, each ``(B, num_classes)``."""
        return {name: logits.softmax(dim=-1) for name, logits in self(images).items()}

    def predict(self, images: Tensor) -> Tensor:
        """Predicted class per attribute, shape ``(B, A)`` in the order of ``attributes``."""
        return torch.stack([logits.argmax(dim=-1) for logits in self(images).values()], dim=1)

    def augment(self, images: Tensor) -> Tensor:
        """Adds noise and blur to random parts of a batch (the robustness augmentation of training)."""
        probability = self.hparams["augment_probability"]
        batch = images.shape[0]
        shape = (batch, 1, 1, 1)
        max_sigma = self.hparams["max_blur_sigma"]
        if max_sigma > 0:
            sigma = max_sigma * float(torch.empty(()).uniform_(0.2, 1.0))
            blurred = gaussian_blur(images, kernel_size=[5, 5], sigma=[sigma, sigma])
            images = torch.where(torch.rand(shape, device=images.device) < probability, blurred, images)
        noise_std = torch.rand(shape, device=images.device) * self.hparams["max_noise_std"]
        noise_std = noise_std * (torch.rand(shape, device=images.device) < probability)
        return images + noise_std * torch.randn_like(images)

    def _loss(self, logits: dict[str, Tensor], labels: Tensor) -> Tensor:
        losses = [F.cross_entropy(logits[name], labels[:, column]) for column, name in enumerate(self.attributes)]
        return torch.stack(losses).mean()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy summed over heads, on augmented images."""
        logits = self(self.augment(batch["image"]))
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
