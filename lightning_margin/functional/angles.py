"""Cosines and angles between embeddings and class centres, with gradients that stay finite at 0 and pi."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cosine_logits", "safe_arccos", "target_cosine"]


class _SafeArccos(torch.autograd.Function):
    """``acos`` whose value is exact and whose gradient is finite at cos = +-1.

    The true derivative ``-1 / sin(theta)`` diverges at theta = 0 and pi. Backward divides by
    ``max(sin(theta), sqrt(eps))`` instead, where ``eps`` is the machine epsilon of the dtype: in float32 that
    only changes the two end points (no float32 cosine lies strictly between ``1 - eps/2`` and 1), so the
    gradient there equals the one at the nearest representable cosine rather than inf.
    """

    @staticmethod
    def forward(ctx, cos: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(cos)
        return torch.acos(cos.clamp(-1.0, 1.0))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (cos,) = ctx.saved_tensors
        eps = torch.finfo(cos.dtype).eps
        sin = ((1 - cos) * (1 + cos)).clamp_min(eps).sqrt()
        # Outside [-1, 1] the forward clamps, so the derivative is zero there.
        return torch.where(cos.abs() <= 1, -grad / sin, torch.zeros_like(grad))


def safe_arccos(cos: Tensor) -> Tensor:
    """Angle ``theta = acos(cos)`` in radians, clamped to [0, pi], with finite gradients at cos = +-1.

    Example:
        >>> safe_arccos(torch.tensor([1.0, 0.0, -1.0]))
        tensor([0.0000, 1.5708, 3.1416])
    """
    return _SafeArccos.apply(cos)


def cosine_logits(embeddings: Tensor, weight: Tensor, scale: float | Tensor = 1.0) -> Tensor:
    """``scale * cos(theta_j)`` between every embedding and every row of ``weight``: ``[B, C]``.

    The scale multiplies the normalised embeddings (``[B, D]``) rather than the ``[B, C]`` result, which saves a
    full pass over the logits in forward and backward. ``scale`` may be a float or a ``[B]`` tensor.

    Example:
        >>> cosine_logits(torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]]), scale=64.0)
        tensor([[64.,  0.]])
    """
    x = F.normalize(embeddings, dim=1)
    if isinstance(scale, Tensor):
        x = x * scale.unsqueeze(1)
    elif scale != 1.0:
        x = x * scale
    return F.linear(x, F.normalize(weight, dim=1))


def target_cosine(embeddings: Tensor, weight: Tensor, labels: Tensor) -> Tensor:
    """``cos(theta_y)`` between each embedding and the row of its own label: ``[B]``.

    Computed directly (``B x D`` work) rather than gathered from the ``[B, C]`` cosine matrix, so the margin can
    be applied without touching, or keeping alive, the full matrix.
    """
    return (F.normalize(embeddings, dim=1) * F.normalize(weight[labels], dim=1)).sum(dim=1)
