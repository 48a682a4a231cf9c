"""Class prompts of zero-shot attribute classifiers: presets, templates and their expansion into prompts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_TEMPLATES = ("a photo of a {}",)
SLOT = "{}"

#: The gender classes in CelebA's order (``Male``: 0 is not male).
GENDER = {"woman": ["woman", "female person"], "man": ["man", "male person"]}
#: FairFace's race groups (Kärkkäinen and Joo, 2021): its 7 classes, and the 4 of its ``race4`` labels.
RACE7 = {
    "White": ["White person"],
    "Black": ["Black person"],
    "Latino_Hispanic": ["Latino person", "Hispanic person"],
    "East_Asian": ["East Asian person"],
    "Southeast_Asian": ["Southeast Asian person"],
    "Indian": ["Indian person"],
    "Middle_Eastern": ["Middle Eastern person"],
}
RACE4 = {
    "White": ["White person"],
    "Black": ["Black person"],
    "Asian": ["Asian person", "East Asian person"],
    "Indian": ["Indian person"],
}
AGE2 = {"young": ["young person"], "old": ["old person", "elderly person"]}
AGE3 = {"young": ["young person"], "middle_aged": ["middle-aged person"], "old": ["old person", "elderly person"]}
#: Class phrases per class name, by preset name; ``gender_race4``/``gender_race7`` are the joint attributes.
PRESETS: dict[str, dict[str, list[str]]] = {
    "gender": GENDER,
    "race4": RACE4,
    "race7": RACE7,
    "age2": AGE2,
    "age3": AGE3,
}


def joint_classes(first: dict[str, list[str]], second: dict[str, list[str]]) -> dict[str, list[str]]:
    """The classes of two attributes at once (``woman_White``...), each phrase ``"<race> <gender word>"``.

    The second preset's phrases end in ``person``, which the first's word replaces (``White woman``).
    """
    joint: dict[str, list[str]] = {}
    for first_name, first_phrases in first.items():
        for second_name, second_phrases in second.items():
            words = [phrase.split()[0] for phrase in first_phrases]
            joint[f"{first_name}_{second_name}"] = [
                phrase.removesuffix("person") + word for phrase in second_phrases for word in words
            ]
    return joint


PRESETS |= {"gender_race4": joint_classes(GENDER, RACE4), "gender_race7": joint_classes(GENDER, RACE7)}


@dataclass(frozen=True)
class ClassPrompts:
    """The classes of one attribute of a zero-shot classifier and the prompts that describe each.

    Attributes:
        attribute: the attribute's name.
        class_names: one name per class, in class order.
        prompts: per class, every prompt of its ensemble (each phrase in each template).
    """

    attribute: str
    class_names: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]


def check_templates(templates: list[str], option: str) -> tuple[str, ...]:
    """The templates, each with exactly one ``{}`` slot, or a ``ValueError`` naming ``option``."""
    if not templates:
        raise ValueError(f"Option '{option}' needs at least one template such as 'a photo of a {{}}'")
    for template in templates:
        if not isinstance(template, str) or template.count(SLOT) != 1:
            raise ValueError(
                f"Option '{option}': template {template!r} must hold exactly one '{{}}' slot for the class phrase "
                "(e.g. 'a photo of a {}')"
            )
    return tuple(templates)


def class_prompts(attribute: str, classes: Any, templates: tuple[str, ...], option: str) -> ClassPrompts:
    """The prompts of one attribute from a preset name or from its classes.

    Args:
        attribute: the attribute's name.
        classes: a preset name (see :data:`PRESETS`); a list with one entry per class, each a phrase or a list of
            phrases (class ``k`` is named after its first phrase); or a mapping of class name to phrase(s).
        templates: each phrase goes into each template.
        option: the option or file that gave them, for errors.

    Raises:
        ValueError: naming ``option`` for an unknown preset, fewer than two classes or an empty phrase.
    """
    where = f"Option '{option}.{attribute}'"
    if isinstance(classes, str):
        if classes not in PRESETS:
            raise ValueError(f"{where}: unknown preset {classes!r}; presets: {sorted(PRESETS)}")
        classes = PRESETS[classes]
    if isinstance(classes, dict):
        named = {str(name): phrases for name, phrases in classes.items()}
    elif isinstance(classes, list | tuple):
        named = {}
        for phrases in classes:
            first = phrases if isinstance(phrases, str) else (list(phrases) or [""])[0]
            named[str(first).replace(" ", "_")] = phrases
    else:
        raise ValueError(f"{where}: expected a preset name, a list of classes or a mapping, got {classes!r}")
    if len(named) < 2:
        raise ValueError(f"{where} needs at least two classes, got {list(named)}")
    prompts = []
    for name, phrases in named.items():
        phrases = [phrases] if isinstance(phrases, str) else list(phrases)
        if not phrases or any(not isinstance(phrase, str) or not phrase.strip() for phrase in phrases):
            raise ValueError(f"{where}: class {name!r} needs one or more non-empty phrases, got {phrases!r}")
        prompts.append(tuple(template.replace(SLOT, phrase) for phrase in phrases for template in templates))
    return ClassPrompts(attribute, tuple(named), tuple(prompts))
