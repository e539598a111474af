"""Partial FC's class sampling: every positive class of the batch plus a random subset of the negatives."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_margin._validation import check_integer

__all__ = ["check_sample_rate", "num_sampled_classes", "sample_classes"]


def check_sample_rate(sample_rate: float) -> float:
    """Return ``sample_rate`` as a float, or raise ``ValueError`` unless it lies in (0, 1]."""
    ok = isinstance(sample_rate, (int, float)) and not isinstance(sample_rate, bool) and math.isfinite(sample_rate)
    if not ok or not 0.0 < sample_rate <= 1.0:
        raise ValueError(
            f"`sample_rate` must lie in (0, 1] (the fraction of class centres used per step; 1 uses all), "
            f"got {sample_rate!r}"
        )
    return float(sample_rate)


def num_sampled_classes(num_classes: int, sample_rate: float) -> int:
    """How many of ``num_classes`` centres a step uses at ``sample_rate`` (at least one; more if the batch has more
    positive classes).

    Example:
        >>> num_sampled_classes(1000, 0.1)
        100
    """
    num_classes = check_integer("num_classes", num_classes)
    return max(1, math.ceil(check_sample_rate(sample_rate) * num_classes - 1e-9))


def sample_classes(
    positives: Tensor, num_classes: int, sample_rate: float, generator: torch.Generator | None = None
) -> Tensor:
    """Partial FC (An et al., 2022, "Killing Two Birds with One Stone: Efficient and Robust Training of Face
    Recognition CNNs by Partial FC"): the sorted class ids one step trains.

    Keeps every class in ``positives`` (the batch's labels, any order, repeats allowed) and fills up to
    :func:`num_sampled_classes` with negatives drawn uniformly without replacement. If the batch alone has more
    positive classes than that, all of them (and no negatives) are used.

    Args:
        positives: 1-D tensor of class ids in ``[0, num_classes)``.
        num_classes: Number of classes to sample from (one shard's classes when sharded).
        sample_rate: Fraction of the classes per step, in (0, 1].
        generator: Random generator on ``positives.device`` (reproducible sampling).

    Example:
        >>> index = sample_classes(torch.tensor([7, 3, 7]), num_classes=100, sample_rate=0.1)
        >>> len(index), bool(torch.isin(torch.tensor([3, 7]), index).all())
        (10, True)
    """
    count = num_sampled_classes(num_classes, sample_rate)
    positives = torch.unique(positives)
    if count >= num_classes:
        return torch.arange(num_classes, device=positives.device)
    if positives.numel() >= count:
        return positives
    # Uniform scores in [0, 1); positives get 2 so top-k always keeps them, negatives are a uniform subset.
    scores = torch.rand(num_classes, generator=generator, device=positives.device)
    scores[positives] = 2.0
    return torch.topk(scores, count, sorted=False).indices.sort().values
