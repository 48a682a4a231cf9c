"""Per-prompt results summarised across prompts: mean, standard deviation and worst prompt of each metric."""

from __future__ import annotations

import math
from typing import Any

from lightning_fair.metrics.suite import FairnessResult

#: Metrics whose largest value is the worst (distances to the target, gaps, bias scores).
HIGHER_IS_WORSE = ("fd", "fd_l1", "fd_kl", "bias_score", "dp_gap", "unknown/")
#: Metrics whose smallest value is the worst (alignment with the prompt, agreement with the requested class).
LOWER_IS_WORSE = ("clip_score", "agreement/")


def worst_direction(name: str) -> int:
    """+1 where a larger value is worse, -1 where a smaller one is, 0 where neither (proportions, counts)."""
    if name.startswith(LOWER_IS_WORSE):
        return -1
    if name.startswith(HIGHER_IS_WORSE) and "=" not in name:
        return 1
    return 0


def across_prompts(results: list[FairnessResult], prompts: list[str]) -> dict[str, dict[str, Any]]:
    """Mean, standard deviation (over prompts, ``ddof`` 0) and, where one is worse, the worst prompt of each metric.

    A metric undefined for some prompts (``None``) is summarised over the others, with their number as ``prompts``.

    Args:
        results: one result per prompt, in prompt order.
        prompts: the prompts, for naming the worst.
    """
    names = dict.fromkeys(name for result in results for name in result.metrics())
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == "num_samples":
            continue
        values = [(prompt, result.metrics().get(name)) for prompt, result in zip(prompts, results, strict=True)]
        defined = [(prompt, float(value)) for prompt, value in values if value is not None and math.isfinite(value)]
        if not defined:
            summary[name] = {"mean": None, "std": None, "prompts": 0}
            continue
        numbers = [value for _, value in defined]
        mean = sum(numbers) / len(numbers)
        entry: dict[str, Any] = {
            "mean": mean,
            "std": math.sqrt(sum((value - mean) ** 2 for value in numbers) / len(numbers)),
            "prompts": len(numbers),
        }
        direction = worst_direction(name)
        if direction:
            prompt, value = max(defined, key=lambda pair: direction * pair[1])
            entry |= {"worst": value, "worst_prompt": prompt}
        summary[name] = entry
    return summary
