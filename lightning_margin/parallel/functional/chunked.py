"""The log-partition of a softmax over class blocks: the core of the sharded, sampled and memory-lean margin loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lightning_margin.functional import row_ids

__all__ = ["chunked_logsumexp", "class_rows", "row_ids"]

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
    return parameter.index_select(0, row_ids(classes, rows_per_class))


def _blocks(num_classes: int, chunk_size: int, index: Tensor | None):
    for start in range(0, num_classes, chunk_size):
        stop = min(start + chunk_size, num_classes)
        yield start, slice(start, stop) if index is None else index[start:stop]


def _excluded(columns: Tensor | None, start: int, width: int) -> tuple[Tensor, Tensor] | None:
    """``(rows, columns within the block)`` of the excluded entries that fall into ``[start, start + width)``."""
    if columns is None:
        return None
    rows = ((columns >= start) & (columns < start + width)).nonzero().squeeze(1)
    return rows, columns[rows] - start


class _BlockLogSumExp(torch.autograd.Function):
    """Forward: log-sum-exp over blocks of classes, skipping one column per row; optionally rows of the parameters.

    Every use of the (large) parameters goes through this one node, so backward writes each parameter's gradient
    into a single buffer: the block gradients and the gathered rows' gradients (``index_add_``) alike.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        block_logits: BlockLogits,
        rows_per_class: tuple[int, ...],
        num_classes: int,
        chunk_size: int,
        recompute: bool,
        index: Tensor | None,
        exclude: Tensor | None,
        gather: Tensor | None,
        features: Tensor,
        *parameters: Tensor,
    ) -> tuple[Tensor, ...]:
        total = features.new_full((features.shape[0],), float("-inf"))
        need_features, need_parameters = ctx.needs_input_grad[8], ctx.needs_input_grad[9:]
        kept = []
        for start, classes in _blocks(num_classes, chunk_size, index):
            if recompute:
                blocks = [class_rows(p, classes, k) for p, k in zip(parameters, rows_per_class, strict=True)]
                logits = block_logits(features, *blocks)
                masked = logits
            else:
                # Keep this block's graph for backward (the plain, not memory-lean, mode).
                leaf = features.detach().requires_grad_(need_features)
                blocks = [
                    class_rows(p.detach(), classes, k).requires_grad_(needed)
                    for p, k, needed in zip(parameters, rows_per_class, need_parameters, strict=True)
                ]
                with torch.enable_grad():
                    logits = block_logits(leaf, *blocks)
                kept.append((leaf, blocks, logits))
                masked = logits.detach().clone()
            excluded = _excluded(exclude, start, masked.shape[1])
            if excluded is not None:
                masked[excluded] = float("-inf")
            total = torch.logaddexp(total, torch.logsumexp(masked, dim=1))
            del masked, logits
        gathered = (
            [class_rows(p, gather, k) for p, k in zip(parameters, rows_per_class, strict=True)]
            if gather is not None
            else []
        )
        ctx.block_logits, ctx.rows_per_class, ctx.kept = block_logits, rows_per_class, kept
        ctx.num_classes, ctx.chunk_size, ctx.recompute = num_classes, chunk_size, recompute
        ctx.save_for_backward(index, exclude, gather, features, total, *parameters)
        return (total, *gathered)

    @staticmethod
    def backward(ctx, grad: Tensor, *grad_gathered: Tensor):  # type: ignore[override]
        index, exclude, gather, features, total, *parameters = ctx.saved_tensors
        needs = ctx.needs_input_grad
        need_features, need_parameters = needs[8], needs[9:]
        grad_features = torch.zeros_like(features) if need_features else None
        grad_parameters: list[Tensor | None] = [None] * len(parameters)
        blocks_iter = iter(ctx.kept)
        for start, classes in _blocks(ctx.num_classes, ctx.chunk_size, index):
            if ctx.recompute:
                leaf = features.detach().requires_grad_(need_features)
                blocks = [
                    class_rows(p.detach(), classes, k).requires_grad_(needed)
                    for p, k, needed in zip(parameters, ctx.rows_per_class, need_parameters, strict=True)
                ]
                with torch.enable_grad():
                    logits = ctx.block_logits(leaf, *blocks)
            else:
                leaf, blocks, logits = next(blocks_iter)
            with torch.no_grad():
                # d logsumexp / d logit = softmax; excluded entries did not take part (assigned: exp may give nan).
                probs = (logits.detach() - total.unsqueeze(1)).exp_().mul_(grad.unsqueeze(1))
                excluded = _excluded(exclude, start, probs.shape[1])
                if excluded is not None:
                    probs[excluded] = 0.0
            inputs = [t for t in (leaf, *blocks) if t.requires_grad]
            if not inputs:
                continue
            # retain_graph: a kept block may be differentiated again (backward(retain_graph=True), gradcheck).
            grads = iter(torch.autograd.grad(logits, inputs, probs, retain_graph=not ctx.recompute))
            if leaf.requires_grad:
                grad_features = grad_features + next(grads) if grad_features is not None else next(grads)
            for i, (parameter, k) in enumerate(zip(parameters, ctx.rows_per_class, strict=True)):
                if not need_parameters[i]:
                    continue
                block_grad = next(grads)
                whole = isinstance(classes, slice) and classes.stop - classes.start == parameter.shape[0] // k
                if whole and grad_parameters[i] is None:
                    grad_parameters[i] = block_grad  # one block holds every row: its gradient is the gradient
                    continue
                if grad_parameters[i] is None:
                    grad_parameters[i] = torch.zeros_like(parameter)
                if isinstance(classes, slice):
                    grad_parameters[i][classes.start * k : classes.stop * k] += block_grad
                else:
                    grad_parameters[i].index_add_(0, row_ids(classes, k), block_grad)
        if gather is not None:
            for i, (parameter, k, rows_grad) in enumerate(
                zip(parameters, ctx.rows_per_class, grad_gathered, strict=True)
            ):
                if not need_parameters[i] or rows_grad is None:
                    continue
                if grad_parameters[i] is None:
                    grad_parameters[i] = torch.zeros_like(parameter)
                grad_parameters[i].index_add_(0, row_ids(gather, k), rows_grad.to(parameter.dtype))
        return (None, None, None, None, None, None, None, None, grad_features, *grad_parameters)


def chunked_logsumexp(
    block_logits: BlockLogits,
    features: Tensor,
    parameters: Sequence[Tensor],
    *,
    num_classes: int,
    chunk_size: int | None = None,
    class_index: Tensor | None = None,
    rows_per_class: Sequence[int] | None = None,
    exclude_columns: Tensor | None = None,
    gather_classes: Tensor | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """``logsumexp`` over classes of ``block_logits``, one block of ``chunk_size`` classes at a time.

    The memory-lean loss of large classifiers (the idea of chunked cross-entropy): forward walks over blocks of
    classes keeping only a running log-sum-exp per row; backward walks again, recomputes each block's logits with
    autograd and back-propagates that block's softmax at once, so neither the ``[B, C]`` logits nor their
    gradient (nor a normalised copy of the weight) exist at any time, for one extra forward matrix product.
    With ``chunk_size=None`` there is one block whose graph is kept (no recomputation): the plain path.

    The margin is applied by the caller: ``exclude_columns`` leaves each row's true class out of the sum, and
    ``logaddexp(lse, target_logit)`` puts the margin-penalised logit back. ``gather_classes`` returns those
    classes' parameter rows through this same node, so that each parameter has one gradient buffer.

    Args:
        block_logits: ``block_logits(features, *parameter_blocks) -> [B, n]``, the logits of ``n`` classes
            (e.g. ``scale * cos``), differentiable in its tensor arguments; it must not capture tensors that need
            gradients.
        features: ``[B, F]``, what the class rows multiply (e.g. scaled, normalised embeddings).
        parameters: Class-major parameters (weight ``[C * k, D]``, optionally a bias ``[C]``).
        num_classes: Number of selected classes (``len(class_index)`` if given).
        chunk_size: Classes per block; None: one block, kept for backward.
        class_index: Optional 1-D tensor of the classes to include (Partial FC); all ``num_classes`` otherwise.
        rows_per_class: Rows per class of each parameter (sub-centres); inferred from the shapes if None.
        exclude_columns: ``[B]`` position among the selected classes left out of each row's sum, or -1.
        gather_classes: ``[B]`` class ids whose parameter rows to return (indices into ``parameters``).

    Returns:
        ``(lse, rows)``: ``[B]`` log-sum-exp of each row, and for each parameter its rows of ``gather_classes``
        (empty without ``gather_classes``).

    Example:
        >>> weight = torch.randn(10, 4, requires_grad=True)
        >>> x, labels = torch.randn(3, 4), torch.tensor([1, 5, 9])
        >>> lse, _ = chunked_logsumexp(lambda f, w: f @ w.T, x, [weight], num_classes=10, chunk_size=4)
        >>> torch.allclose(lse, torch.logsumexp(x @ weight.T, dim=1))
        True
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"`chunk_size` must be an integer >= 1, got {chunk_size!r}")
    if class_index is not None and class_index.numel() != num_classes:
        raise ValueError(f"`class_index` holds {class_index.numel()} classes but num_classes={num_classes}")
    if rows_per_class is None:
        if class_index is not None:
            raise ValueError("pass `rows_per_class` with `class_index`: it cannot be inferred from the shapes")
        rows_per_class = [p.shape[0] // num_classes for p in parameters]
    total, *gathered = _BlockLogSumExp.apply(
        block_logits,
        tuple(int(k) for k in rows_per_class),
        int(num_classes),
        int(chunk_size or max(num_classes, 1)),
        chunk_size is not None,
        class_index,
        exclude_columns,
        gather_classes,
        features,
        *parameters,
    )
    return total, gathered
