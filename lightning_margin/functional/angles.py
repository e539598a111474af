"""Cosines and angles between embeddings and class centres, with gradients that stay finite at 0 and pi."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "cosine_logits",
    "gather_rows",
    "normalized_linear",
    "paired_cosines",
    "row_ids",
    "safe_arccos",
    "scaled_directions",
    "target_cosine",
]

# F.normalize's floor on a norm: rows shorter than this are treated as having this norm.
_NORM_EPS = 1e-12
# Size of the reused [B, block] buffer of the CPU backward (1 Mi elements: 4 MiB in float32).
_BLOCK_ELEMENTS = 1 << 20


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


class _CosineLogits(torch.autograd.Function):
    """``features @ normalize(weight).T`` computed as ``(features @ weight.T) / ||weight_j||``.

    ``F.normalize(weight)`` writes a ``[C, D]`` copy of the weight and its backward makes several more
    ``[C, D]`` passes (division, its gradient with respect to the norms, the broadcast sum); with face-recognition
    shapes (``B`` of a few hundred, ``D = 512``, ``C`` up to millions) those elementwise passes cost as much as the
    matrix products themselves. Dividing the ``[B, C]`` product by the row norms instead, and writing the weight's
    gradient as the projection of ``H = (grad / ||W_j||).T @ features`` onto the tangent plane of each row,
    ``grad_W_j = H_j - (W_j . H_j) W_j / ||W_j||^2``, needs one ``[C, D]`` read in forward and two in backward.

    ``W_j . H_j`` equals ``sum_i grad_ij out_ij``: with ``save_output`` (only for callers that never modify the
    output in place) it is computed from the ``[B, C]`` output, cheaper than from ``[C, D]`` when ``B < D``.
    """

    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor, save_output: bool = False) -> Tensor:  # type: ignore[override]
        norms = torch.linalg.vector_norm(weight, dim=1)
        inverse = norms.clamp_min(_NORM_EPS).reciprocal()
        out = F.linear(features, weight).mul_(inverse)
        saved = (out,) if save_output else ()
        ctx.save_for_backward(features, weight, inverse, norms >= _NORM_EPS, *saved)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        features, weight, inverse, unclamped, *saved = ctx.saved_tensors
        need_features, need_weight = ctx.needs_input_grad[:2]
        grad_features = torch.zeros_like(features) if need_features else None
        grad_weight = torch.empty_like(weight) if need_weight else None
        radial = inverse.new_empty(inverse.shape) if need_weight and saved else None
        # On CPU, grad / ||W_j|| is formed a block of columns at a time in one reused buffer: a fresh [B, C]
        # temporary costs about as much as a matrix product there (page faults of a new allocation). Caching
        # allocators (CUDA) make the temporary free, and one block means the fewest kernel launches.
        batch, num_rows = grad.shape
        block = num_rows
        if grad.device.type == "cpu":
            block = max(1, min(num_rows, _BLOCK_ELEMENTS // max(batch, 1)))
        buffer = grad.new_empty(batch * block)
        for start in range(0, num_rows, block):
            stop = min(start + block, num_rows)
            scratch = buffer[: batch * (stop - start)].view(batch, stop - start)
            if radial is not None:
                radial[start:stop] = torch.mul(grad[:, start:stop], saved[0][:, start:stop], out=scratch).sum(0)
            scaled = torch.mul(grad[:, start:stop], inverse[start:stop], out=scratch)
            if grad_features is not None:
                grad_features.addmm_(scaled, weight[start:stop])
            if grad_weight is not None:
                torch.mm(scaled.t(), features, out=grad_weight[start:stop])
        if grad_weight is not None:
            if radial is None:
                radial = torch.einsum("cd,cd->c", grad_weight, weight)
            # The radial part only exists where the norm was not clamped (F.normalize's derivative there is 0).
            radial = radial * inverse.square() * unclamped
            grad_weight.addcmul_(weight, radial.unsqueeze(1), value=-1.0)
        return grad_features, grad_weight, None


def scaled_directions(embeddings: Tensor, scale: float | Tensor = 1.0) -> Tensor:
    """``scale * x / ||x||`` per row: the features a cosine head's class rows multiply.

    Folding the scale into the ``[B, D]`` embeddings costs ``B x D`` work where scaling the ``[B, C]`` cosines
    would cost ``B x C``. ``scale`` is a float or a ``[B]`` tensor (a per-sample scale such as ``||x||``).

    Example:
        >>> scaled_directions(torch.tensor([[3.0, 4.0]]), scale=10.0)
        tensor([[6., 8.]])
    """
    x = F.normalize(embeddings, dim=1)
    if isinstance(scale, Tensor):
        return x * scale.unsqueeze(1)
    return x * scale if scale != 1.0 else x


def normalized_linear(features: Tensor, weight: Tensor, *, save_output: bool = False) -> Tensor:
    """``features @ normalize(weight).T``: ``[B, C]``, without a normalised ``[C, D]`` copy of the weight.

    The product is divided by the row norms, and the weight's gradient is the projection onto each row's tangent
    plane (see :class:`_CosineLogits`). With ``save_output`` backward reads the ``[B, C]`` output instead of the
    ``[C, D]`` weight gradient for the radial term (cheaper when ``B < D``); the caller must then not modify the
    output in place.

    Example:
        >>> normalized_linear(torch.tensor([[2.0, 1.0]]), torch.tensor([[3.0, 0.0], [0.0, 0.5]]))
        tensor([[2., 1.]])
    """
    return _CosineLogits.apply(features, weight, save_output)


def cosine_logits(embeddings: Tensor, weight: Tensor, scale: float | Tensor = 1.0) -> Tensor:
    """``scale * cos(theta_j)`` between every embedding and every row of ``weight``: ``[B, C]``.

    The scale multiplies the normalised embeddings (:func:`scaled_directions`) rather than the ``[B, C]`` result,
    and the weight is never normalised as a ``[C, D]`` tensor (:func:`normalized_linear`): a margin head then
    costs about what ``nn.Linear`` + cross-entropy costs. ``scale`` may be a float or a ``[B]`` tensor. The output
    may be modified in place (the heads add the margin with ``scatter_add_``).

    Example:
        >>> cosine_logits(torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]]), scale=64.0)
        tensor([[64.,  0.]])
    """
    return normalized_linear(scaled_directions(embeddings, scale), weight)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, rows: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(rows)
        ctx.shape = weight.shape
        return weight.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (rows,) = ctx.saved_tensors
        # Sparse: autograd adds it into the dense gradient that the logits send to the same weight, in place,
        # instead of materialising a second [C, D] gradient (zeros + scatter) and a third for the sum.
        return torch.sparse_coo_tensor(rows.unsqueeze(0), grad, ctx.shape, check_invariants=False), None


def gather_rows(weight: Tensor, rows: Tensor) -> Tensor:
    """``weight[rows]`` whose gradient is a sparse ``[C, D]`` tensor holding only the gathered rows.

    Use it where a few rows of a large weight are read beside a dense use of the whole weight (the true-class
    rows of a margin head): the sparse gradient is accumulated into the dense one without a ``[C, D]`` copy.
    The weight's gradient ends up dense as long as some other path gives it a dense one.

    Example:
        >>> weight = torch.eye(3, requires_grad=True)
        >>> gather_rows(weight, torch.tensor([2, 2])).sum().backward()
        >>> weight.grad.to_dense()[2]
        tensor([2., 2., 2.])
    """
    return _GatherRows.apply(weight, rows)


def row_ids(classes: Tensor, rows_per_class: int) -> Tensor:
    """The row ids of ``classes`` in a class-major parameter with ``rows_per_class`` rows per class (sub-centres).

    Class ``j`` owns rows ``j * k .. j * k + k - 1``.

    Example:
        >>> row_ids(torch.tensor([2, 0]), rows_per_class=3)
        tensor([6, 7, 8, 0, 1, 2])
    """
    if rows_per_class == 1:
        return classes
    return (classes.unsqueeze(1) * rows_per_class + torch.arange(rows_per_class, device=classes.device)).flatten()


def paired_cosines(embeddings: Tensor, rows: Tensor) -> Tensor:
    """``[B, k]`` cosines between each embedding and its own ``k`` rows (``rows``: ``[B * k, D]``, row-major).

    The true-class cosines of a head with ``k`` sub-centres per class, computed from the gathered rows
    (``B x k x D`` work) rather than from the ``[B, C]`` cosine matrix.

    Example:
        >>> paired_cosines(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        tensor([[1., 0.]])
    """
    centres = rows.view(embeddings.shape[0], -1, embeddings.shape[1])
    return (F.normalize(embeddings, dim=1).unsqueeze(1) * F.normalize(centres, dim=2)).sum(dim=2)


def target_cosine(embeddings: Tensor, weight: Tensor, labels: Tensor) -> Tensor:
    """``cos(theta_y)`` between each embedding and the row of its own label: ``[B]``.

    Computed directly (``B x D`` work) rather than gathered from the ``[B, C]`` cosine matrix, so the margin can
    be applied without touching, or keeping alive, the full matrix; the rows come from :func:`gather_rows`, so
    their gradient is sparse and adds into the dense one of :func:`cosine_logits` without a second ``[C, D]``.

    Example:
        >>> target_cosine(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([1]))
        tensor([0.7071])
    """
    return paired_cosines(embeddings, gather_rows(weight, labels))[:, 0]
