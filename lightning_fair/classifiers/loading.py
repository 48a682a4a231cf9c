"""Loading an attribute classifier from a checkpoint, a pretrained folder or a shipped name."""

from __future__ import annotations

import contextvars
from pathlib import Path

from lightning_fair.classifiers.attribute_classifier import AttributeClassifier
from lightning_fair.classifiers.zero_shot import SPEC_FILE, SPEC_SUFFIXES, ZeroShotClassifier
from lightning_fair.models import CLASSIFIER_RECIPE, describe_model, read_checkpoint, read_json, resolve_model_path

EXPECTED = (
    "an AttributeClassifier checkpoint (.ckpt), a folder written by its save_pretrained "
    f"(config.json and model.safetensors), a zero-shot spec ({'/'.join(SPEC_SUFFIXES)}) or a CLIP folder with "
    f"its {SPEC_FILE}"
)
Classifier = AttributeClassifier | ZeroShotClassifier


def load_classifier(reference: str, option: str = "classifier") -> Classifier:
    """Loads a frozen attribute classifier in eval mode: a trained one, or a zero-shot one over a CLIP folder.

    Args:
        reference: a Lightning checkpoint (``.ckpt``), a folder written by ``save_pretrained``, a zero-shot spec file
            (YAML or JSON: ``clip`` folder, class prompts per attribute, see :class:`ZeroShotClassifier`), a CLIP
            folder holding its ``zero_shot.json``, or the name of a classifier shipped with the package.
        option: the option that named it, for error messages.

    Raises:
        FileNotFoundError: if there is no such file, folder or shipped classifier.
        ValueError: naming the file or folder if it is not an attribute classifier.
    """
    path = resolve_model_path(reference, "attribute classifier", CLASSIFIER_RECIPE)
    # A fresh context: inside the command line's instantiation of a method that loads a classifier, Lightning
    # would otherwise hand the method's own hyperparameters to the classifier's save_hyperparameters.
    if path.is_file() and path.suffix in SPEC_SUFFIXES:
        classifier = ZeroShotClassifier.from_spec(path)
    elif path.is_dir() and (path / SPEC_FILE).is_file():
        classifier = ZeroShotClassifier.from_spec(path / SPEC_FILE)
    elif path.is_dir() and (read_json(path / "config.json") or {}).get("model_type") == "clip":
        raise ValueError(
            f"Option '{option}': '{path}' is a CLIP folder without class prompts: write them into {SPEC_FILE} there, "
            "or give a spec file (clip: <folder>, attributes: {Male: gender})"
        )
    elif path.is_dir():
        if not _is_pretrained_folder(path):
            raise ValueError(f"Option '{option}': '{path}' is {describe_model(path)}; expected {EXPECTED}")
        classifier = contextvars.Context().run(AttributeClassifier.from_pretrained, path)
    else:
        classifier = contextvars.Context().run(_from_checkpoint, path, option)
    classifier.reference = reference
    return classifier.eval().requires_grad_(False)


def _is_pretrained_folder(folder: Path) -> bool:
    config = read_json(folder / "config.json") or {}
    return "attributes" in config and (folder / "model.safetensors").is_file()


def _from_checkpoint(path: Path, option: str) -> AttributeClassifier:
    """The classifier of a Lightning checkpoint, or a ``ValueError`` saying what the checkpoint holds instead."""
    checkpoint = read_checkpoint(path, option)
    written_by = checkpoint.get("lightning_fair", {}).get("method")
    if written_by is not None or "state_dict" not in checkpoint:
        holds = f"a checkpoint of {written_by}" if written_by else "a checkpoint without weights ('state_dict')"
        raise ValueError(f"Option '{option}': '{path}' is {holds}; expected {EXPECTED}")
    return AttributeClassifier.from_state(checkpoint.get("hyper_parameters", {}), checkpoint["state_dict"], f"'{path}'")
