"""What every attribute classifier shares: attribute lookup and the view of the images it is given."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2.functional import center_crop

from lightning_fair.data.base import VIEW_TOLERANCE


class ClassifierContract:
    """The attribute-classifier contract, written once for the trained and the zero-shot classifiers.

    Whatever labels images (the evaluator, Distribution Guidance's pseudo-labels, Self-Guidance's target weights,
    scale calibration, feature-space quality) uses ``attributes``, ``num_classes``, :meth:`attribute_index`,
    ``predict_proba(images)`` (class probabilities per attribute), :meth:`predict`, ``features(images)`` (the feature
    space of ``fid_<feature_space>``), :meth:`abstains` and the view methods below.

    The view: ``center_crop_fraction`` is the side of the centred square crop of the source images the classifier was
    trained on, as a fraction of their shorter side (``None``: any view, as a classifier trained on photographs of
    every framing). Whoever feeds it declares the view of its images with :meth:`expect_inputs`; :meth:`to_view` then
    crops every image to the classifier's view and resizes it to ``input_size``, or refuses images that show less
    than the classifier saw (or whose view is unknown while the classifier saw a crop).
    """

    attributes: list[str]
    num_classes: list[int]
    reference: str | None
    input_crop_fraction: float | None
    input_source: str
    #: The name of the feature space in metric names (``fid_cls`` for a trained classifier, ``fid_clip`` for CLIP).
    feature_space: str = "cls"

    @property
    def center_crop_fraction(self) -> float | None:
        """The view it was trained on (``None``: any view)."""
        raise NotImplementedError

    @property
    def input_size(self) -> int:
        """The side of the square images its network takes."""
        raise NotImplementedError

    @property
    def kind(self) -> str:
        """What it is, in messages (e.g. ``"attribute classifier"``)."""
        return "attribute classifier"

    @property
    def description(self) -> str:
        """How messages name it: ``the <kind> '<where it was loaded from>'``."""
        return f"the {self.kind} '{self.reference}'" if self.reference else f"the {self.kind}"

    def attribute_index(self, name: str, option: str | None = None) -> int:
        """Position of an attribute, or a ``ValueError`` naming ``option`` and the known names."""
        if name not in self.attributes:
            prefix = f"Option '{option}': " if option else ""
            raise ValueError(
                sentence(f"{prefix}{self.description} has no attribute {name!r}; it predicts {self.attributes}")
            )
        return self.attributes.index(name)

    def predict_proba(self, images: Tensor) -> dict[str, Tensor]:
        """Class probabilities per attribute, each ``(B, num_classes)``, of images in [-1, 1]."""
        raise NotImplementedError

    def predict(self, images: Tensor) -> Tensor:
        """Predicted class per attribute, shape ``(B, A)`` in the order of ``attributes``."""
        return torch.stack([values.argmax(dim=-1) for values in self.predict_proba(images).values()], dim=1)

    def abstains(self, probabilities: Tensor) -> Tensor:
        """Which samples it leaves unlabelled (``unknown``), from their probabilities of one attribute; none here."""
        return probabilities.new_zeros(len(probabilities), dtype=bool)

    def init_view(self) -> None:
        """Starts with the inputs' view unknown (call in the constructor)."""
        self.input_crop_fraction = None
        self.input_source = "the given images (declare it with expect_inputs)"

    def expect_inputs(self, crop_fraction: float | None, source: str) -> None:
        """Declares the view of the images it will be given from now on.

        Args:
            crop_fraction: side of the centred square crop of their source images that the images show, as a
                fraction of the source's shorter side (1: the whole shorter side); ``None`` if unknown.
            source: where the images come from, for error messages (e.g. ``"the images of the backbone 'x'"``).

        Raises:
            ValueError: if the images show less than the classifier was trained on, or their view is unknown while
                the classifier was trained on a crop.
        """
        own = self.center_crop_fraction
        if own is not None:
            trained = f"{self.description} was trained on a centre crop of {own:.4g} of its source images"
            if crop_fraction is None and own < 1 - VIEW_TOLERANCE:
                raise ValueError(
                    sentence(
                        f"{trained}, but the view of {source} is unknown: record it as 'center_crop_fraction' (1 for "
                        "uncropped images) in the backbone's lightning_fair.json, or use a classifier of uncropped "
                        "images"
                    )
                )
            if crop_fraction is not None and own > crop_fraction * (1 + VIEW_TOLERANCE):
                raise ValueError(
                    sentence(f"{trained}, but {source} show only {crop_fraction:.4g} of theirs (a narrower view)")
                )
        self.input_crop_fraction = crop_fraction
        self.input_source = source

    def expect_generated(self, method: nn.Module) -> None:
        """Declares the images generated by ``method`` as inputs: the view of its backbone's training images."""
        backbone = getattr(method, "backbone", None)
        view = getattr(backbone, "center_crop_fraction", None)
        self.expect_inputs(view, f"the images of the backbone '{getattr(backbone, 'reference', None)}'")

    @contextmanager
    def inputs_from(self, crop_fraction: float | None, source: str) -> Iterator[ClassifierContract]:
        """Within the block, expects images of another view (see :meth:`expect_inputs`); then the previous one."""
        previous = self.input_crop_fraction, self.input_source
        self.expect_inputs(crop_fraction, source)
        try:
            yield self
        finally:
            self.input_crop_fraction, self.input_source = previous

    def to_view(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] of the view declared by :meth:`expect_inputs`, cropped and resized to its own view."""
        self.expect_inputs(self.input_crop_fraction, self.input_source)
        own = self.center_crop_fraction
        relative = 1.0 if own is None else own / (self.input_crop_fraction or 1.0)
        if relative < 1 - VIEW_TOLERANCE:
            side = max(1, round(relative * min(images.shape[-2:])))
            images = center_crop(images, [side, side])
        size = self.input_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return images


def sentence(text: str) -> str:
    """``text`` with a capital first letter (the rest untouched: it may hold paths)."""
    return text[:1].upper() + text[1:]
