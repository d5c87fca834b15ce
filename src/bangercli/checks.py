"""Checks shared by every stage: the one seed range, and finite numbers."""

from __future__ import annotations

import math
import numbers

from .errors import UsageError

MAX_SEED = 2**63 - 1  # seeds are 0..MAX_SEED everywhere (generation, training, evaluation)


def check_seed(seed, flag: str = "--seed") -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise UsageError(f"{flag} must be a whole number, got {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"{flag} must be between 0 and 2**63 - 1, got {seed}")


def check_finite(**values: float | None) -> None:
    """Refuse nan and inf: they pass `x > 0` checks and then hang or crash."""
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
