"""Cosine logits without a normalised copy of the weight: the fast kernel behind every sharded/chunked head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["fused_cosine_logits"]

# F.normalize's floor on a norm: rows shorter than this are treated as having this norm.
_NORM_EPS = 1e-12
# Size of the reused [B, block] buffer in backward (4 Mi elements: 16 MiB in float32).
_BLOCK_ELEMENTS = 1 << 22


class _FusedCosineLogits(torch.autograd.Function):
    """``features @ normalize(weight).T`` computed as ``(features @ weight.T) / ||weight_j||``.

    ``F.normalize(weight)`` writes a ``[C, D]`` copy of the weight and its backward makes several more
    ``[C, D]`` passes (division, its gradient with respect to the norms, the broadcast sum); with face-recognition
    shapes (``B`` of a few hundred, ``D = 512``, ``C`` up to millions) those elementwise passes cost as much as the
    matrix products themselves. Dividing the ``[B, C]`` product by the row norms instead, and writing the weight's
    gradient as the projection of ``H = (grad / ||W_j||).T @ features`` onto the tangent plane of each row,
    ``grad_W_j = H_j - (W_j . H_j) W_j / ||W_j||^2``, needs one ``[C, D]`` read in forward and two in backward, and
    saves nothing of size ``[B, C]`` for backward.
    """

    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        norms = torch.linalg.vector_norm(weight, dim=1)
        inverse = norms.clamp_min(_NORM_EPS).reciprocal()
        ctx.save_for_backward(features, weight, inverse, norms >= _NORM_EPS)
        return F.linear(features, weight).mul_(inverse)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        features, weight, inverse, unclamped = ctx.saved_tensors
        need_features, need_weight = ctx.needs_input_grad[:2]
        grad_features = torch.zeros_like(features) if need_features else None
        grad_weight = torch.empty_like(weight) if need_weight else None
        # grad / ||W_j|| is formed a block of columns at a time in one reused buffer: a fresh [B, C] temporary
        # would cost as much as a matrix product on CPU (page faults) and needless memory on GPU.
        batch, num_rows = grad.shape
        block = max(1, min(num_rows, _BLOCK_ELEMENTS // max(batch, 1)))
        buffer = grad.new_empty(batch * block)
        for start in range(0, num_rows, block):
            stop = min(start + block, num_rows)
            out = buffer[: batch * (stop - start)].view(batch, stop - start)
            scaled = torch.mul(grad[:, start:stop], inverse[start:stop], out=out)
            if grad_features is not None:
                grad_features.addmm_(scaled, weight[start:stop])
            if grad_weight is not None:
                torch.mm(scaled.t(), features, out=grad_weight[start:stop])
        if grad_weight is not None:
            # The radial part only exists where the norm was not clamped (F.normalize's derivative there is 0).
            radial = torch.einsum("cd,cd->c", grad_weight, weight) * inverse.square() * unclamped
            grad_weight.addcmul_(weight, radial.unsqueeze(1), value=-1.0)
        return grad_features, grad_weight


def fused_cosine_logits(embeddings: Tensor, weight: Tensor, scale: float | Tensor = 1.0) -> Tensor:
    """``scale * cos(theta_j)`` between every embedding and every row of ``weight``: ``[B, C]``.

    The same values and gradients as :func:`lightning_margin.functional.cosine_logits` (up to rounding), but the
    weight is never normalised as a ``[C, D]`` tensor: the product is divided by the row norms (see
    :class:`_FusedCosineLogits`), which makes the whole margin head cost about what ``nn.Linear`` + cross-entropy
    costs. ``scale`` may be a float or a ``[B]`` tensor; it multiplies the normalised embeddings.

    Example:
        >>> fused_cosine_logits(torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]]), scale=64.0)
        tensor([[64.,  0.]])
    """
    features = F.normalize(embeddings, dim=1)
    if isinstance(scale, Tensor):
        features = features * scale.unsqueeze(1)
    elif scale != 1.0:
        features = features * scale
    return _FusedCosineLogits.apply(features, weight)
