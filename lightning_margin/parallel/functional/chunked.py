"""The log-partition of a margin softmax over class blocks, recomputing each block in backward (memory-lean loss)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["chunked_logsumexp", "class_rows"]

BlockLogits = Callable[..., Tensor]


def class_rows(parameter: Tensor, classes: slice | Tensor, rows_per_class: int) -> Tensor:
    """The rows of a class-major ``parameter`` (``[num_classes * rows_per_class, ...]``) that belong to ``classes``.

    ``classes`` is a slice of class ids (a view, no copy) or a 1-D tensor of class ids (a gathered copy).

    Example:
        >>> class_rows(torch.arange(6), torch.tensor([2, 0]), rows_per_class=2)
        tensor([4, 5, 0, 1])
    """
    if isinstance(classes, slice):
        return parameter[classes.start * rows_per_class : classes.stop * rows_per_class]
    return parameter.index_select(0, _row_ids(classes, rows_per_class))


def _row_ids(classes: Tensor, rows_per_class: int) -> Tensor:
    if rows_per_class == 1:
        return classes
    return (classes.unsqueeze(1) * rows_per_class + torch.arange(rows_per_class, device=classes.device)).flatten()


def _blocks(num_classes: int, chunk_size: int, index: Tensor | None):
    for start in range(0, num_classes, chunk_size):
        stop = min(start + chunk_size, num_classes)
        yield start, stop, slice(start, stop) if index is None else index[start:stop]


def _replace_targets(logits: Tensor, positions: Tensor, target_logits: Tensor, start: int) -> Tensor:
    """Rows whose target column lies in this block (``[R]``); writes the target logits there, in place."""
    rows = ((positions >= start) & (positions < start + logits.shape[1])).nonzero().squeeze(1)
    logits[rows, positions[rows] - start] = target_logits[rows].to(logits.dtype)
    return rows


class _ChunkedLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        block_logits: BlockLogits,
        rows_per_class: tuple[int, ...],
        num_classes: int,
        chunk_size: int,
        index: Tensor | None,
        positions: Tensor,
        features: Tensor,
        target_logits: Tensor,
        *parameters: Tensor,
    ) -> Tensor:
        total = features.new_full((features.shape[0],), float("-inf"))
        for start, _, classes in _blocks(num_classes, chunk_size, index):
            blocks = [class_rows(p, classes, k) for p, k in zip(parameters, rows_per_class, strict=True)]
            logits = block_logits(features, *blocks)
            _replace_targets(logits, positions, target_logits, start)
            total = torch.logaddexp(total, torch.logsumexp(logits, dim=1))
        ctx.block_logits, ctx.rows_per_class = block_logits, rows_per_class
        ctx.num_classes, ctx.chunk_size = num_classes, chunk_size
        ctx.save_for_backward(index, positions, features, target_logits, total, *parameters)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        index, positions, features, target_logits, total, *parameters = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_features = torch.zeros_like(features)
        grad_targets = torch.zeros_like(target_logits)
        grad_parameters = [torch.zeros_like(p) if needs[8 + i] else None for i, p in enumerate(parameters)]
        features = features.detach().requires_grad_(needs[6])
        for start, _, classes in _blocks(ctx.num_classes, ctx.chunk_size, index):
            with torch.enable_grad():
                blocks = [
                    class_rows(p.detach(), classes, k).requires_grad_(g is not None)
                    for p, g, k in zip(parameters, grad_parameters, ctx.rows_per_class, strict=True)
                ]
                logits = ctx.block_logits(features, *blocks)
            with torch.no_grad():
                # d logsumexp / d logit = softmax; the target column came from target_logits, not from the block.
                probs = logits.detach().clone()
                rows = _replace_targets(probs, positions, target_logits, start)
                probs.sub_(total.unsqueeze(1)).exp_().mul_(grad.unsqueeze(1))
                columns = positions[rows] - start
                grad_targets[rows] += probs[rows, columns]
                probs[rows, columns] = 0.0
            inputs = [t for t in (features, *blocks) if t.requires_grad]
            if not inputs:
                continue
            grads = torch.autograd.grad(logits, inputs, probs)
            grads_iter = iter(grads)
            if features.requires_grad:
                grad_features += next(grads_iter)
            for parameter_grad, k in zip(grad_parameters, ctx.rows_per_class, strict=True):
                if parameter_grad is None:
                    continue
                block_grad = next(grads_iter)
                if isinstance(classes, slice):
                    parameter_grad[classes.start * k : classes.stop * k] += block_grad
                else:
                    parameter_grad.index_add_(0, _row_ids(classes, k), block_grad)
        return (None, None, None, None, None, None, grad_features, grad_targets, *grad_parameters)


def chunked_logsumexp(
    block_logits: BlockLogits,
    features: Tensor,
    parameters: Sequence[Tensor],
    target_logits: Tensor,
    target_columns: Tensor,
    *,
    num_classes: int,
    chunk_size: int,
    class_index: Tensor | None = None,
    rows_per_class: Sequence[int] | None = None,
) -> Tensor:
    """``logsumexp`` over classes of margin logits, never holding more than ``[B, chunk_size]`` of them.

    The memory-lean loss of large classifiers (the idea of chunked / "cut" cross-entropy): forward walks over
    blocks of ``chunk_size`` classes and keeps only a running log-sum-exp per row; backward walks again,
    recomputes each block's logits with autograd and back-propagates that block's softmax straight away, so
    neither the ``[B, C]`` logits nor their gradient (nor a normalised copy of the weight) ever exist at once.
    The cost is one extra forward matrix product.

    Args:
        block_logits: ``block_logits(features, *parameter_blocks) -> [B, n]``, the logits of ``n`` classes
            without margin (e.g. ``scale * cos``), differentiable in its tensor arguments; it must not capture
            tensors that need gradients.
        features: ``[B, F]``, what the class rows multiply (e.g. scaled, normalised embeddings).
        parameters: Class-major parameters (weight ``[C * k, D]``, optionally a bias ``[C]``).
        target_logits: ``[B]`` margin-penalised logits that replace the column ``target_columns`` of each row
            (gradients flow to them instead of to that column of ``block_logits``).
        target_columns: ``[B]`` position of each row's target among the selected classes, or -1 if the row's
            class is not among them (another shard holds it).
        num_classes: Number of selected classes ``C`` (``len(class_index)`` if given).
        chunk_size: Classes per block.
        class_index: Optional 1-D tensor of the classes to include (Partial FC); all ``num_classes`` otherwise.
        rows_per_class: Rows per class of each parameter (sub-centres); inferred from the shapes if None.

    Returns:
        ``[B]`` log-partition of each row over the selected classes.

    Example:
        >>> weight = torch.randn(10, 4, requires_grad=True)
        >>> x, labels = torch.randn(3, 4), torch.tensor([1, 5, 9])
        >>> plain = torch.logsumexp(x @ weight.T, dim=1)
        >>> target = (x * weight[labels]).sum(dim=1)
        >>> lean = chunked_logsumexp(lambda f, w: f @ w.T, x, [weight], target, labels, num_classes=10, chunk_size=4)
        >>> torch.allclose(lean, plain)
        True
    """
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be an integer >= 1, got {chunk_size!r}")
    if class_index is not None and class_index.numel() != num_classes:
        raise ValueError(f"`class_index` holds {class_index.numel()} classes but num_classes={num_classes}")
    if rows_per_class is None:
        if class_index is not None:
            raise ValueError("pass `rows_per_class` with `class_index`: it cannot be inferred from the shapes")
        rows_per_class = [p.shape[0] // num_classes for p in parameters]
    return _ChunkedLogSumExp.apply(
        block_logits,
        tuple(int(k) for k in rows_per_class),
        int(num_classes),
        int(chunk_size),
        class_index,
        target_columns,
        features,
        target_logits,
        *parameters,
    )
