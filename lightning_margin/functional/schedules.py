"""Schedules for head hyperparameters (SphereFace's lambda, margin and scale warm-ups), as pure functions."""

from __future__ import annotations

import math

__all__ = ["SCHEDULES", "sphereface_lambda", "warmup_value"]

SCHEDULES = ("constant", "linear", "cosine")


def sphereface_lambda(iteration: int, base: float, gamma: float, power: float, lambda_min: float) -> float:
    """SphereFace's annealed blend weight: ``max(lambda_min, base * (1 + gamma * iteration) ** -power)``.

    This is the formula of the original Caffe ``MarginInnerProduct`` layer, whose counter ``iteration`` is
    incremented *before* use, so it is 1 at the first forward pass.

    Example:
        >>> sphereface_lambda(1, base=1000, gamma=0.12, power=1, lambda_min=5)
        892.8571428571428
    """
    return max(lambda_min, base * (1.0 + gamma * iteration) ** (-power))


def warmup_value(step: int, start: float, end: float, warmup_steps: int, schedule: str = "linear") -> float:
    """Value at ``step`` of a warm-up from ``start`` to ``end`` over ``warmup_steps`` steps, then ``end``.

    ``constant`` is ``end`` from step 0; ``linear`` interpolates linearly; ``cosine`` follows half a cosine
    (slow start and finish).

    Example:
        >>> round(warmup_value(50, start=0.0, end=0.5, warmup_steps=100, schedule="cosine"), 12)
        0.25
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {', '.join(map(repr, SCHEDULES))}; got {schedule!r}")
    if schedule == "constant" or warmup_steps <= 0 or step >= warmup_steps:
        return end
    progress = max(step, 0) / warmup_steps
    if schedule == "cosine":
        progress = (1.0 - math.cos(math.pi * progress)) / 2.0
    return start + (end - start) * progress
