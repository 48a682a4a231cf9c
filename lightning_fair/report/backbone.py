"""The report's check of its backbone, cached per backbone, classifier and settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lightning_fair.callbacks import FairnessEvaluator
from lightning_fair.checks import BackboneVerdict, check_backbone
from lightning_fair.methods import Prompts
from lightning_fair.models import resolve_model_path
from lightning_fair.report.runs import Protocol
from lightning_fair.utils.files import write_text_atomically


def cached_backbone_check(
    plain: dict[str, Any], evaluator: FairnessEvaluator, samples_per_class: int, protocol: Protocol, folder: Path
) -> BackboneVerdict | None:
    """Checks the backbone of the report's ``plain`` row with the evaluator's classifier and reference data.

    The verdict is kept in ``folder`` under a key of the model's files (their sizes and times), the classifier and
    the settings, and read back by a later report. ``None`` when the evaluator has no reference data.
    """
    if evaluator.reference is None:
        return None
    model = resolve_model_path(plain["backbone"], "backbone")
    files = sorted(
        (str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in model.rglob("*") if path.is_file()
    )
    settings = [
        files,
        evaluator.classifier_reference,
        samples_per_class,
        protocol.steps,
        protocol.seed,
        plain["prompts"],
    ]
    key = hashlib.sha256(json.dumps(settings, default=str).encode()).hexdigest()[:12]
    cache = folder / f"{key}.json"
    if cache.is_file():
        return BackboneVerdict(**{k: v for k, v in json.loads(cache.read_text()).items() if k != "usable"})
    prompts = None if plain["prompts"] is None else Prompts(**plain["prompts"])
    verdict = check_backbone(
        plain["backbone"],
        evaluator.classifier,
        evaluator.reference,
        samples_per_class=samples_per_class,
        steps=protocol.steps,
        seed=protocol.seed,
        prompts=prompts,
        device=next(evaluator.classifier.parameters()).device,
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomically(cache, json.dumps(verdict.as_dict(), indent=2) + "\n")
    return verdict
