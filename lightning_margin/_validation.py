"""Argument checks shared by every public constructor: one wording for every error message."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["check_choice", "check_integer", "check_non_negative", "check_positive", "check_range"]


def check_positive(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` unless it is finite and > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}")
    return float(value)


def check_non_negative(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` unless it is finite and >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
    return float(value)


def check_range(name: str, value: Any, low: float, high: float, *, high_inclusive: bool = True) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` unless ``low <= value <= high`` (or ``< high``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and low <= value and (value <= high if high_inclusive else value < high)
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"`{name}` must lie in [{low:g}, {high:g}{bracket}, got {value!r}")
    return float(value)


def check_integer(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` unless it is an integer >= ``minimum``.

    Integral floats such as ``4.0`` (what YAML or a scheduler may produce) are accepted; ``4.5`` is not.
    """
    integral = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if isinstance(value, bool) or not integral or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """Return ``value``, or raise ``ValueError`` naming the allowed values."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value
