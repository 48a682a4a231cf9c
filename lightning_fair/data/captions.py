"""Captions of face images made from their attributes, drawn per image for text-to-image training."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_fair.utils.options import check_ranges

GENDER_ATTRIBUTE = "Male"
GENDER_WORDS = ("woman", "man")  # class 0, class 1 of the gender attribute
NEUTRAL_WORD = "person"
PREFIX = "a photo of a"
PHRASES = {  # in caption order
    "Blond_Hair": "with blond hair",
    "Black_Hair": "with black hair",
    "Brown_Hair": "with brown hair",
    "Bangs": "with bangs",
    "Pale_Skin": "with pale skin",
    "Eyeglasses": "wearing glasses",
    "Smiling": "smiling",
}
SEPARATOR = ","


def caption_words() -> list[str]:
    """Every word and punctuation mark a caption can hold, sorted."""
    text = " ".join([PREFIX, *GENDER_WORDS, NEUTRAL_WORD, *PHRASES.values(), SEPARATOR])
    return sorted(set(text.split()))


class CaptionWriter:
    """Writes captions such as ``"a photo of a woman with blond hair, wearing glasses, smiling"``.

    Each image draws from its own generator, in this order: whether its caption is empty, whether its gender word
    becomes ``person``, then whether each attribute phrase of :data:`PHRASES` is dropped (one draw per phrase
    whether the image has the attribute or not), so a caption depends only on the generator's seed and the
    attributes. The gender word is replaced with the same probability for both genders, so that
    ``"a photo of a person"`` keeps the data's share of each gender.

    Args:
        attributes: names of the attribute columns the captions are made from; ``Male`` gives the gender word
            (``person`` without it) and the names in :data:`PHRASES` give phrases, other columns are ignored.
        person_probability: probability of writing ``person`` in place of ``man`` or ``woman``.
        phrase_dropout: probability of leaving out each attribute phrase.
        empty_probability: probability of the empty caption (the null condition of classifier-free guidance).
    """

    def __init__(
        self,
        attributes: list[str],
        person_probability: float = 0.5,
        phrase_dropout: float = 0.5,
        empty_probability: float = 0.1,
    ) -> None:
        probabilities = {
            "person_probability": person_probability,
            "phrase_dropout": phrase_dropout,
            "empty_probability": empty_probability,
        }
        check_ranges(probability=probabilities)
        self.attributes = list(attributes)
        self.person_probability = person_probability
        self.phrase_dropout = phrase_dropout
        self.empty_probability = empty_probability
        self.gender_column = self.attributes.index(GENDER_ATTRIBUTE) if GENDER_ATTRIBUTE in self.attributes else None
        self.phrase_columns = {name: self.attributes.index(name) for name in PHRASES if name in self.attributes}

    def caption(self, labels: list[int], generator: torch.Generator) -> str:
        """The caption of one image with attribute ``labels`` (in the order of ``attributes``)."""
        empty, person, *dropped = torch.rand(2 + len(PHRASES), generator=generator).tolist()
        if empty < self.empty_probability:
            return ""
        if self.gender_column is None or person < self.person_probability:
            subject = NEUTRAL_WORD
        else:
            subject = GENDER_WORDS[labels[self.gender_column]]
        phrases = [
            phrase
            for (name, phrase), draw in zip(PHRASES.items(), dropped, strict=True)
            if name in self.phrase_columns and labels[self.phrase_columns[name]] == 1 and draw >= self.phrase_dropout
        ]
        text = f"{PREFIX} {subject}"
        return f"{text} {f'{SEPARATOR} '.join(phrases)}" if phrases else text

    def __call__(self, attributes: Tensor, generators: list[torch.Generator]) -> list[str]:
        """Captions of a batch: ``attributes`` (B x A, long) with one generator per image."""
        if attributes.shape[1] != len(self.attributes):
            raise ValueError(
                f"The batch has {attributes.shape[1]} attribute columns but the captions expect {len(self.attributes)}"
                f" ({self.attributes}): set the model's 'attributes' to the DataModule's"
            )
        rows = attributes.tolist()
        return [self.caption(row, generator) for row, generator in zip(rows, generators, strict=True)]


def zero_shot_classes(attributes: list[str]) -> dict[str, dict[str, list[str]]]:
    """Class phrases, for a zero-shot classifier over captions like these, of those of ``attributes`` a caption names.

    ``Male`` is ``woman``/``man``; a hair colour is told from the other hair colours, any other phrase from
    ``person`` without it. The phrases go into the template ``"a photo of a {}"``.
    """
    classes: dict[str, dict[str, list[str]]] = {}
    if GENDER_ATTRIBUTE in attributes:
        classes[GENDER_ATTRIBUTE] = {word: [word] for word in GENDER_WORDS}
    hair = [name for name in PHRASES if name.endswith("_Hair")]
    for name in (name for name in PHRASES if name in attributes):
        others = [f"{NEUTRAL_WORD} {PHRASES[other]}" for other in hair if other != name] if name in hair else []
        classes[name] = {"no": others or [NEUTRAL_WORD], "yes": [f"{NEUTRAL_WORD} {PHRASES[name]}"]}
    return classes
