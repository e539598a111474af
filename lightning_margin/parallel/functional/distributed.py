"""Collectives with the gradients a class-sharded classifier needs, and input checks that fail on every rank.

Every rank of a sharded head computes the *same* global loss from all-gathered embeddings and all-reduced
statistics; each rank's backward then only has to reach its own parameters. That fixes the backward rule of each
collective here: an all-gather sums the gradients of its output over the ranks (each rank's copy of the gathered
embeddings feeds a different shard of logits), and the log-partition combined from per-shard log-sum-exps sends
each rank the gradient of its own part.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_margin._validation import check_integer

__all__ = [
    "all_gather_rows",
    "all_gather_with_grad",
    "all_logsumexp",
    "check_inputs_on_every_rank",
    "rank_and_world_size",
    "shard_bounds",
]

ProcessGroup = dist.ProcessGroup if dist.is_available() else object


def rank_and_world_size(process_group: ProcessGroup | None = None) -> tuple[int, int]:
    """``(rank, world_size)`` in ``process_group`` (the default group if None); ``(0, 1)`` without a process group.

    Example:
        >>> rank_and_world_size()  # no torch.distributed process group in this process
        (0, 1)
    """
    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(process_group), dist.get_world_size(process_group)


def shard_bounds(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """The classes ``[start, end)`` that ``rank`` holds when ``num_classes`` are split over ``world_size`` ranks.

    Contiguous blocks; the first ``num_classes % world_size`` ranks hold one class more than the others, so any
    world size up to ``num_classes`` works and the blocks differ by at most one class.

    Example:
        >>> [shard_bounds(10, 4, rank) for rank in range(4)]
        [(0, 3), (3, 6), (6, 8), (8, 10)]
    """
    num_classes = check_integer("num_classes", num_classes)
    world_size = check_integer("world_size", world_size)
    if world_size > num_classes:
        raise ValueError(
            f"cannot shard num_classes={num_classes} over world_size={world_size} ranks: every rank needs at "
            "least one class; use fewer ranks or an unsharded head"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"`rank` must lie in [0, {world_size}), got {rank!r}")
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _pad_rows(tensor: Tensor, rows: int) -> Tensor:
    if tensor.shape[0] == rows:
        return tensor.contiguous()
    padded = tensor.new_zeros((rows, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    return padded


def all_gather_rows(tensor: Tensor, sizes: Sequence[int], process_group: ProcessGroup | None = None) -> Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order; ranks may hold different numbers of rows.

    ``sizes[r]`` is the number of rows on rank ``r`` (all ranks must pass the same list). No gradient.
    """
    _, world_size = rank_and_world_size(process_group)
    longest = max(sizes)
    parts = [tensor.new_empty((longest, *tensor.shape[1:])) for _ in range(world_size)]
    # Backends such as gloo only gather equal shapes: pad to the longest shard, then trim.
    dist.all_gather(parts, _pad_rows(tensor.detach(), longest), group=process_group)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor, sizes: tuple[int, ...], process_group, gradient_scale: float) -> Tensor:  # type: ignore[override]
        ctx.sizes, ctx.process_group, ctx.gradient_scale = sizes, process_group, gradient_scale
        return all_gather_rows(tensor, sizes, process_group)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        rank, _ = rank_and_world_size(ctx.process_group)
        longest = max(ctx.sizes)
        # Rank r's rows receive the sum, over ranks, of the gradients each rank's logits shard sends them.
        stacked = torch.stack([_pad_rows(part, longest) for part in grad.split(list(ctx.sizes))])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=ctx.process_group)
        own = stacked[rank, : ctx.sizes[rank]]
        if ctx.gradient_scale != 1.0:
            own = own * ctx.gradient_scale
        return own, None, None, None


def all_gather_with_grad(
    tensor: Tensor, sizes: Sequence[int], process_group: ProcessGroup | None = None, gradient_scale: float = 1.0
) -> Tensor:
    """All-gather rows (as :func:`all_gather_rows`) whose backward returns each rank the summed gradient of its rows.

    ``gradient_scale`` multiplies the returned gradient: pass the world size when the module that produced
    ``tensor`` is wrapped in DistributedDataParallel, which *averages* gradients over ranks, so that its update
    equals a single process's on the global batch (insightface's Partial FC does the same).
    """
    return _AllGatherWithGrad.apply(tensor, tuple(int(s) for s in sizes), process_group, float(gradient_scale))


class _AllLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: Tensor, process_group) -> Tensor:  # type: ignore[override]
        _, world_size = rank_and_world_size(process_group)
        parts = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(parts, local.contiguous(), group=process_group)
        total = torch.logsumexp(torch.stack(parts), dim=0)
        ctx.save_for_backward(local, total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        local, total = ctx.saved_tensors
        # d logsumexp_r(l_r) / d l_own = softmax weight of this rank's partial sum.
        return grad * torch.exp(local - total), None


def all_logsumexp(local: Tensor, process_group: ProcessGroup | None = None) -> Tensor:
    """``log(sum_r exp(local_r))`` over the ranks, elementwise: the global log-partition from per-shard ones.

    This is the "all-reduced max and sum" of a sharded softmax in one numerically stable step (the ``[W, B]``
    partial results are gathered, which costs the same as two all-reduces of ``[B]``).
    """
    return _AllLogSumExp.apply(local, process_group)


# Problems one rank can have with its own batch; codes are all-gathered so every rank raises the same error.
_OK, _BAD_SHAPE, _BAD_LABELS, _NON_FINITE, _OUT_OF_RANGE = range(5)


def _integer_labels_of_length(labels: Tensor, length: int) -> bool:
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != length:
        return False
    return not (labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool)


def check_inputs_on_every_rank(
    embeddings: Tensor,
    labels: Tensor,
    embedding_size: int,
    num_classes: int,
    process_group: ProcessGroup | None = None,
    name: str = "ShardedMarginHead",
) -> list[int]:
    """Validate this rank's batch, share the verdict, and raise the same ``ValueError`` on every rank if any is bad.

    A rank that raised alone would leave the others waiting in the next collective forever; here each rank
    contributes ``[problem, batch size, min label, max label, bad rows]`` to one all-gather, so all of them see
    every rank's problem. Returns the batch size of every rank (the row counts of the all-gather that follows).
    """
    info = [_OK, 0, 0, 0, 0]
    if not isinstance(embeddings, Tensor) or embeddings.ndim != 2 or embeddings.shape[1] != embedding_size:
        info[0] = _BAD_SHAPE
    elif not _integer_labels_of_length(labels, embeddings.shape[0]):
        info[0] = _BAD_LABELS
    else:
        info[1] = embeddings.shape[0]
        finite_rows = torch.isfinite(embeddings).all(dim=1)
        low = labels.min() if labels.numel() else labels.new_zeros(())
        high = labels.max() if labels.numel() else labels.new_zeros(())
        # One host transfer for all three numbers.
        low, high, bad_rows = torch.stack([low.long(), high.long(), (~finite_rows).sum()]).tolist()
        info[2:] = [low, high, bad_rows]
        if bad_rows:
            info[0] = _NON_FINITE
        elif labels.numel() and (low < 0 or high >= num_classes):
            info[0] = _OUT_OF_RANGE
    rank, world_size = rank_and_world_size(process_group)
    if world_size > 1:
        device = embeddings.device if isinstance(embeddings, Tensor) else torch.device("cpu")
        mine = torch.tensor(info, dtype=torch.long, device=device)
        everyone = [torch.empty_like(mine) for _ in range(world_size)]
        dist.all_gather(everyone, mine, group=process_group)
        table = [part.tolist() for part in everyone]
    else:
        table = [info]
    problems = []
    for other, (code, batch, low, high, bad_rows) in enumerate(table):
        where = f"rank {other}: " if world_size > 1 else ""
        if code == _BAD_SHAPE:
            shape = tuple(embeddings.shape) if other == rank and isinstance(embeddings, Tensor) else "another shape"
            problems.append(f"{where}expects embeddings of shape [batch, {embedding_size}], got {shape}")
        elif code == _BAD_LABELS:
            problems.append(f"{where}expects integer labels of shape [batch] (one per embedding)")
        elif code == _NON_FINITE:
            problems.append(f"{where}got non-finite (NaN or inf) embeddings in {bad_rows} of {batch} rows")
        elif code == _OUT_OF_RANGE:
            problems.append(f"{where}expects labels in [0, {num_classes}), got values from {low} to {high}")
    if problems:
        raise ValueError(f"{name} " + "; ".join(problems))
    return [row[1] for row in table]
