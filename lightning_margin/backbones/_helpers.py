"""Small helpers shared by the face backbones: input-size arithmetic and argument checks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["downsampled_size", "module_device_dtype", "to_size_pair"]


def to_size_pair(img_size: int | Sequence[int]) -> tuple[int, int]:
    """Return ``img_size`` as a positive ``(height, width)`` pair.

    Example:
        >>> to_size_pair(112)
        (112, 112)
    """
    pair = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(pair) != 2 or not all(isinstance(side, int) and side > 0 for side in pair):
        raise ValueError(
            f"img_size must be a positive int or a (height, width) pair of positive ints, got {img_size!r}"
        )
    return int(pair[0]), int(pair[1])


def downsampled_size(img_size: int | Sequence[int], num_halvings: int) -> tuple[int, int]:
    """Spatial size after ``num_halvings`` stride-2 convolutions whose kernel is 2 * padding + 1 (or 1x1, no padding).

    Each such convolution maps a side of ``n`` pixels to ``floor((n - 1) / 2) + 1 = ceil(n / 2)``, so repeated halving
    gives ``ceil(n / 2**num_halvings)``: a 112x112 face crop becomes a 7x7 map after four halvings, 96 -> 6, 100 -> 7.

    Example:
        >>> downsampled_size(112, 4)
        (7, 7)
        >>> downsampled_size((128, 100), 4)
        (8, 7)
    """
    if num_halvings < 0:
        raise ValueError(f"num_halvings must be >= 0, got {num_halvings}")
    height, width = to_size_pair(img_size)
    factor = 2**num_halvings
    return math.ceil(height / factor), math.ceil(width / factor)


def module_device_dtype(module: nn.Module) -> dict[str, torch.device | torch.dtype]:
    """``device`` / ``dtype`` keyword arguments that place a new layer beside ``module``'s existing parameters."""
    for parameter in module.parameters():
        return {"device": parameter.device, "dtype": parameter.dtype}
    return {}
