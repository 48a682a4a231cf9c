"""How a method's conditions reach the backbone: class labels, or prompts on a text-to-image model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_fair.backbones import Condition, DiffusionBackbone


@dataclass
class Prompts:
    """The prompts of a method on a text-conditional backbone (ignored by nothing: refused on other backbones).

    Attributes:
        neutral: the prompt of unguided sampling (default: the neutral prompt recorded with the backbone, e.g.
            ``"a photo of a person"``).
        classes: one prompt per class of ``attribute``, for methods that condition on classes (class ``k`` is
            ``classes[k]``), e.g. ``["a photo of a woman", "a photo of a man"]`` for ``Male``.
        attribute: the attribute the classes are of (the name the conditions are reported under).
    """

    neutral: str | None = None
    classes: list[str] | None = None
    attribute: str | None = None

    def __post_init__(self) -> None:
        if self.classes is not None and len(self.classes) < 2:
            raise ValueError(f"Option 'prompts.classes' needs one prompt per class (at least 2), got {self.classes}")


class ClassConditions:
    """The conditions of a :class:`~lightning_fair.methods.base.DebiasingMethod`, written once for every backbone.

    :meth:`neutral_condition` (null label, neutral prompt or nothing) and :meth:`class_condition` (class labels, or
    one prompt per class from ``prompts.classes``), with the checks that name the method when a backbone cannot
    take them.
    """

    backbone: DiffusionBackbone
    prompts: Prompts
    device: torch.device

    @property
    def condition_attribute(self) -> str:
        """The name the per-sample class conditions are reported under."""
        attribute = self.prompts.attribute if self.backbone.conditioning == "text" else None
        return attribute or getattr(self.backbone, "condition_attribute", None) or "condition"

    @property
    def num_condition_classes(self) -> int:
        """Classes a method can condition on: the backbone's labels, or ``prompts.classes``."""
        self.require_classes()
        if self.backbone.conditioning == "class":
            return self.backbone.num_classes
        return len(self.prompts.classes)

    def require_classes(self, null: bool = False) -> None:
        """Refuses, naming this method, a backbone that cannot be conditioned on classes (or has no null label)."""
        method, backbone = type(self).__name__, self.backbone
        if backbone.conditioning == "text" and self.prompts.classes is None:
            raise ValueError(
                f"{method} conditions on classes: '{backbone.reference}' takes text prompts, so give one prompt per "
                "class in 'prompts.classes' (e.g. ['a photo of a woman', 'a photo of a man'])"
            )
        if backbone.conditioning == "none":
            raise ValueError(
                f"{method} needs a backbone conditioned on class labels or text; '{backbone.reference}' is "
                "unconditional"
            )
        if null and backbone.conditioning == "class" and backbone.null_label is None:
            raise ValueError(f"{method} needs a backbone trained with a null label; '{backbone.reference}' has none")

    def class_condition(self, labels: Tensor) -> Condition:
        """The backbone's condition for class ``labels``: the labels, or the prompts of ``prompts.classes``."""
        self.require_classes()
        if self.backbone.conditioning == "class":
            return self.backbone.class_condition(labels.to(self.device))
        return self.backbone.prompt_condition([self.prompts.classes[k] for k in labels.tolist()]).to(self.device)

    def neutral_condition(self, batch_size: int) -> Condition:
        """The condition of unguided sampling: the null label, the neutral prompt, or none."""
        if self.backbone.conditioning != "text":
            return self.backbone.null_condition(batch_size, self.device)
        prompt = self.prompts.neutral if self.prompts.neutral is not None else self.backbone.neutral_prompt
        if prompt is None:
            raise ValueError(
                f"'{self.backbone.reference}' records no neutral prompt: set 'prompts.neutral' "
                "(e.g. 'a photo of a person')"
            )
        return self.backbone.prompt_condition([prompt] * batch_size).to(self.device)
