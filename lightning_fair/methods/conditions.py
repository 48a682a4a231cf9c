"""How a method's conditions reach the backbone: class labels, or prompts on a text-to-image model."""

from __future__ import annotations

from dataclasses import dataclass


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
