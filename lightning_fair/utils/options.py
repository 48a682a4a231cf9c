"""Range checks of numeric options, with one error line naming the option."""

from __future__ import annotations

from collections.abc import Mapping


def check_ranges(
    positive: Mapping[str, float | None] | None = None,
    non_negative: Mapping[str, float | None] | None = None,
    probability: Mapping[str, float | None] | None = None,
) -> None:
    """Raises a ``ValueError`` naming the first option out of its range; ``None`` values (unset) are skipped.

    Args:
        positive: options that must be greater than 0, by name.
        non_negative: options that must be at least 0, by name.
        probability: options that must lie in [0, 1], by name.
    """
    for name, value in (positive or {}).items():
        if value is not None and not value > 0:
            raise ValueError(f"Option '{name}' must be positive, got {value}")
    for name, value in (non_negative or {}).items():
        if value is not None and not value >= 0:
            raise ValueError(f"Option '{name}' must be non-negative, got {value}")
    for name, value in (probability or {}).items():
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"Option '{name}' must be a probability in [0, 1], got {value}")
