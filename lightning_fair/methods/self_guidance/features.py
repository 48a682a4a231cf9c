"""Image features for self-annotation: the frozen backbone's h-space, a local timm model or the classifier's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from lightning_fair.backbones import Condition, DiffusionBackbone
from lightning_fair.classifiers import AttributeClassifier
from lightning_fair.diffusion.seeding import FEATURE_STREAM, per_sample_randn, sample_generators

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_SIZE = 224


class HSpaceFeatures(nn.Module):
    """The frozen backbone's h-space (mid-block output) of a noised image, averaged over space: needs no other model.

    Image ``i`` is noised to ``timestep`` with noise drawn from ``(seed, i)``, so its features depend on it alone.

    Args:
        backbone: the frozen model.
        condition: the backbone's condition of a batch of ``n`` images (null label, neutral prompt).
        add_noise: the forward process ``(x0, noise, t) -> x_t``.
        timestep: the noise level the features are read at.
        seed: seed of the noise.
    """

    def __init__(
        self,
        backbone: DiffusionBackbone,
        condition: Callable[[int], Condition],
        add_noise: Callable[[Tensor, Tensor, Tensor], Tensor],
        timestep: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.backbone, self.condition, self.add_noise = backbone, condition, add_noise
        self.timestep, self.seed = timestep, seed
        self.description = f"hspace(t={timestep}, seed={seed})"

    @torch.no_grad()
    def forward(self, images: Tensor, indices: Tensor, condition: Condition | None = None) -> Tensor:
        """``(B, C_h)`` features of images in [-1, 1] with dataset ``indices``, under ``condition`` if given."""
        x0 = self.backbone.encode(images)
        noise = per_sample_randn(sample_generators(self.seed, indices, FEATURE_STREAM), tuple(x0.shape[1:]), x0.device)
        t = torch.full((len(x0),), self.timestep, dtype=torch.long, device=x0.device)
        condition = self.condition(len(x0)) if condition is None else condition
        h = self.backbone.h(self.add_noise(x0, noise, t), t, condition)
        return h.float().mean(dim=(2, 3))


class TimmFeatures(nn.Module):
    """A timm model from a local weights file, with the paper's recipe: 224 px, ImageNet normalisation, CLS token.

    Vision transformers give their last layer's CLS token (DINO ViT-B/16 in the paper); other models their pooled
    features. Nothing is downloaded: a missing file or one that does not fit ``model_name`` is a one-line error.

    Args:
        model_name: the timm architecture, e.g. ``vit_base_patch16_224``.
        weights: a ``.safetensors`` or PyTorch state-dict file of that architecture.
    """

    def __init__(self, model_name: str, weights: str) -> None:
        super().__init__()
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"Option 'feature_weights': no weights file at '{path.resolve()}' (nothing is downloaded)"
            )
        try:
            self.model = timm.create_model(model_name, pretrained=False, num_classes=0)
        except RuntimeError as error:
            raise ValueError(f"Option 'feature_model': {error}") from None
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
        state = {key: value for key, value in state.items() if not key.startswith(("head.", "fc.", "classifier."))}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            first = (missing or unexpected)[0]
            raise ValueError(
                f"Option 'feature_weights': '{path}' does not fit the timm architecture '{model_name}' "
                f"({len(missing)} missing and {len(unexpected)} unexpected weights, e.g. '{first}')"
            )
        self.model.requires_grad_(False).eval()
        self.description = f"timm({model_name}, {path.name})"
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: Tensor, indices: Tensor) -> Tensor:
        """``(B, D)`` features of images in [-1, 1]."""
        x = F.interpolate((images + 1) / 2, size=(TIMM_SIZE, TIMM_SIZE), mode="bicubic", align_corners=False)
        tokens = self.model.forward_features((x.clamp(0, 1) - self.mean) / self.std)
        if tokens.ndim == 3:  # a transformer: the CLS token of the last layer
            return tokens[:, 0].float()
        return self.model.forward_head(tokens, pre_logits=True).float()


class ClassifierFeatures(nn.Module):
    """The attribute classifier's penultimate features: supervised, a reference row only."""

    def __init__(self, classifier: AttributeClassifier, reference: str) -> None:
        super().__init__()
        self.classifier = classifier
        self.description = f"classifier({reference})"

    @torch.no_grad()
    def forward(self, images: Tensor, indices: Tensor) -> Tensor:
        """``(B, D)`` features of images in [-1, 1]."""
        return self.classifier.features(images).float()
