"""How a method's conditions reach the backbone: class labels, or prompts on a text-to-image model."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from lightning_fair.backbones import Condition, DiffusionBackbone
from lightning_fair.data.prompt_sets import SLOT_EXAMPLE, PromptSet, template_fields


@dataclass
class Prompts:
    """The prompts of a method on a text-conditional backbone (ignored by nothing: refused on other backbones).

    Attributes:
        neutral: the prompt of unguided sampling, or a list of them (a prompt set: every metric is then per prompt);
            default: the neutral prompt recorded with the backbone, e.g. ``"a photo of a person"``.
        file: a prompt set in a file instead (text, one prompt per line, or CSV with a ``prompt`` column and
            metadata columns such as ``occupation``); see :class:`~lightning_fair.data.prompt_sets.PromptSet`.
        classes: one prompt per class of ``attribute``, for methods that condition on classes (class ``k`` is
            ``classes[k]``), e.g. ``["a photo of a woman", "a photo of a man"]`` for ``Male``. With a prompt set,
            each is a template over the neutral prompt: ``{prompt}`` is the prompt and ``{<column>}`` its metadata,
            e.g. ``"{prompt}, female"`` or ``"a photo of a female {occupation}"``.
        attribute: the attribute the classes are of (the name the conditions are reported under).
        negative: a negative prompt: the condition classifier-free guidance steers away from (in place of the empty
            prompt), as the official Distribution Guidance Stable Diffusion script uses one.
    """

    neutral: str | list[str] | None = None
    classes: list[str] | None = None
    attribute: str | None = None
    file: str | None = None
    negative: str | None = None

    def __post_init__(self) -> None:
        if self.classes is not None and len(self.classes) < 2:
            raise ValueError(f"Option 'prompts.classes' needs one prompt per class (at least 2), got {self.classes}")
        if self.file is not None and self.neutral is not None:
            raise ValueError("Options 'prompts.neutral' and 'prompts.file' both give neutral prompts; give one")

    def prompt_set(self, default: str | None) -> PromptSet:
        """The neutral prompts: ``file``, ``neutral``, or ``default`` (the backbone's)."""
        if self.file is not None:
            prompt_set = PromptSet.read(self.file)
        else:
            neutral = self.neutral if self.neutral is not None else default
            if neutral is None:
                raise ValueError("Set 'prompts.neutral' (e.g. 'a photo of a person') or 'prompts.file'")
            prompt_set = PromptSet((neutral,) if isinstance(neutral, str) else tuple(neutral))
        for template in self.classes or []:
            if len(prompt_set) > 1 and not template_fields(template):
                raise ValueError(
                    f"Option 'prompts.classes': {template!r} has no slot for the neutral prompt, and there are "
                    f"{len(prompt_set)} of them: write each class as a template, e.g. {SLOT_EXAMPLE}"
                )
            prompt_set.fill(template, 0, "prompts.classes")
        return prompt_set


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

    @cached_property
    def prompt_set(self) -> PromptSet | None:
        """The neutral prompts on a text-to-image backbone (``None`` on others)."""
        if self.backbone.conditioning != "text":
            return None
        if self.prompts.neutral is None and self.prompts.file is None and self.backbone.neutral_prompt is None:
            raise ValueError(
                f"'{self.backbone.reference}' records no neutral prompt: set 'prompts.neutral' "
                "(e.g. 'a photo of a person') or 'prompts.file'"
            )
        return self.prompts.prompt_set(self.backbone.neutral_prompt)

    @property
    def num_prompts(self) -> int:
        """How many neutral prompts the samples are drawn for (1 on a backbone without text)."""
        return 1 if self.prompt_set is None else len(self.prompt_set)

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

    def class_prompt(self, label: int, prompt: int = 0) -> str:
        """The prompt of class ``label`` for neutral prompt ``prompt`` (``prompts.classes``, filled in)."""
        return self.prompt_set.fill(self.prompts.classes[label], prompt, "prompts.classes")

    def class_condition(self, labels: Tensor, prompt: int = 0) -> Condition:
        """The backbone's condition for class ``labels``: the labels, or their prompts for neutral prompt ``prompt``."""
        self.require_classes()
        if self.backbone.conditioning == "class":
            return self.backbone.class_condition(labels.to(self.device))
        texts = [self.class_prompt(label, prompt) for label in labels.tolist()]
        return self.backbone.prompt_condition(texts).to(self.device)

    def neutral_condition(self, batch_size: int, prompt: int = 0) -> Condition:
        """The condition of unguided sampling: the null label, neutral prompt ``prompt``, or none."""
        if self.backbone.conditioning != "text":
            return self.backbone.null_condition(batch_size, self.device)
        return self.backbone.prompt_condition([self.prompt_set.prompts[prompt]] * batch_size).to(self.device)

    def null_condition(self, batch_size: int) -> Condition:
        """What classifier-free guidance steers away from: ``prompts.negative``, or the backbone's null condition."""
        if self.prompts.negative is not None and self.backbone.conditioning == "text":
            return self.backbone.prompt_condition([self.prompts.negative] * batch_size).to(self.device)
        return self.backbone.null_condition(batch_size, self.device)
