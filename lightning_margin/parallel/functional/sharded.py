"""The margin softmax cross-entropy over class centres sharded across ranks, optionally sampled and chunked."""

from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_margin.heads import MarginHead
from lightning_margin.parallel.functional.chunked import chunked_logsumexp, class_rows
from lightning_margin.parallel.functional.distributed import (
    ProcessGroup,
    all_gather_rows,
    all_gather_with_grad,
    all_logsumexp,
    check_inputs_on_every_rank,
    rank_and_world_size,
)
from lightning_margin.parallel.functional.partial_fc import check_sample_rate, sample_classes

__all__ = ["ShardedLoss", "sharded_margin_cross_entropy"]


class ShardedLoss(NamedTuple):
    """The loss and, with Partial FC, the local class ids (``0 .. local classes - 1``) this step used."""

    loss: Tensor
    sampled_classes: Tensor | None


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    # As the heads do: float32 for half-precision inputs, float64 stays float64.
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _no_autocast(tensor: Tensor):
    device_type = tensor.device.type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()


class _BlockLogits:
    """The logits of a block of classes as the loss sees them: the head's plain class logits, then its non-target
    transform against every row's (gradient-free) target logit."""

    def __init__(self, head: MarginHead, target_logits: Tensor) -> None:
        self.head, self.target_logits = head, target_logits

    def __call__(self, features: Tensor, *rows: Tensor) -> Tensor:
        return self.head.non_target_logits(self.head.class_logits(features, *rows), self.target_logits)


def sharded_margin_cross_entropy(
    head: MarginHead,
    embeddings: Tensor,
    labels: Tensor,
    num_classes: int,
    class_start: int = 0,
    *,
    sample_rate: float = 1.0,
    chunk_size: int | None = None,
    process_group: ProcessGroup | None = None,
    gradient_scale: float | None = None,
    generator: torch.Generator | None = None,
) -> ShardedLoss:
    """Mean margin cross-entropy of the global batch when each rank holds only some of the class centres.

    Model parallelism for the classifier (the scheme of insightface's Partial FC): every rank all-gathers the
    embeddings and labels of all ranks, computes the logits of its own classes only, and the softmax
    normaliser is combined across ranks from per-shard log-sum-exps; the true-class (margin) logit is computed by
    the rank that holds the true class and all-reduced. Every rank returns the same loss, equal to the head's loss
    on the concatenated batch with the full weight matrix, and backward gives each rank the exact gradient of
    its shard and of its own embeddings. Without a process group (or with one rank) this is the head's loss
    computed in pieces, which is how Partial FC and the chunked loss run on one device.

    Only the head's public pieces are used (:class:`~lightning_margin.heads.MarginHead` lists them and what a head
    must guarantee), so any head, a user-registered one included, runs here unchanged.

    Args:
        head: The head whose ``weight`` (and ``bias``) holds the rows of classes
            ``[class_start, class_start + head.num_classes)``; its hyperparameters and buffers are used as is.
        embeddings: This rank's ``[B_r, D]`` embeddings.
        labels: This rank's ``[B_r]`` global class ids in ``[0, num_classes)``.
        num_classes: Number of classes over all ranks.
        class_start: Global id of the head's first class.
        sample_rate: Partial FC: the fraction of this rank's classes used per step (positives always), in (0, 1].
        chunk_size: Memory-lean mode: compute the logits in blocks of this many classes and recompute them in
            backward (see :func:`~lightning_margin.parallel.functional.chunked_logsumexp`); None holds them all.
        process_group: The ranks that share the classes (the default group if None and one is initialised).
        gradient_scale: Factor on the gradient returned to the embeddings; defaults to the world size, which
            undoes DistributedDataParallel's averaging of the backbone's gradients (see
            :func:`~lightning_margin.parallel.functional.all_gather_with_grad`). Pass 1.0 for the plain gradient.
        generator: Random generator for Partial FC's negatives.

    Returns:
        ``ShardedLoss(loss, sampled_classes)``; ``sampled_classes`` is None unless ``sample_rate < 1``.

    Example:
        >>> from lightning_margin.heads import ArcFace
        >>> head = ArcFace(embedding_size=8, num_classes=10)
        >>> x, y = torch.randn(4, 8), torch.tensor([1, 2, 3, 9])
        >>> torch.allclose(sharded_margin_cross_entropy(head, x, y, num_classes=10, chunk_size=3).loss, head(x, y))
        True
    """
    sample_rate = check_sample_rate(sample_rate)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"`chunk_size` must be an integer >= 1 or None, got {chunk_size!r}")
    local_classes = head.num_classes
    _, world_size = rank_and_world_size(process_group)
    sizes = check_inputs_on_every_rank(
        embeddings, labels, head.embedding_size, num_classes, process_group, name=type(head).__name__
    )
    with _no_autocast(embeddings):
        x = embeddings.to(_compute_dtype(embeddings, head.weight))
        if world_size > 1:
            scale = float(world_size) if gradient_scale is None else float(gradient_scale)
            x = all_gather_with_grad(x, sizes, process_group, gradient_scale=scale)
            labels = all_gather_rows(labels, sizes, process_group)

        # Rows whose class this rank holds ("owned"); the others are -1 from here on.
        local_labels = labels - class_start
        owned = (local_labels >= 0) & (local_labels < local_classes)
        safe_labels = torch.where(owned, local_labels, torch.zeros_like(local_labels))
        parameters = list(head.class_parameters().values())
        rows_per_class = [p.shape[0] // local_classes for p in parameters]

        # Values first (no gradient): what the margin needs from the true class's rows (its cosine, ...) comes
        # from the rank that holds them; the running statistics and CurricularFace's hard-negative threshold need
        # every row's value before any logit is computed.
        with torch.no_grad():
            rows = [class_rows(p.detach(), safe_labels, k) for p, k in zip(parameters, rows_per_class, strict=True)]
            values = head.target_inputs(x.detach(), rows)
            values = torch.where(owned.unsqueeze(1), values, torch.zeros_like(values))
            if world_size > 1:
                dist.all_reduce(values, group=process_group)
            if head.training:
                head.update_statistics(x.detach(), labels, values)
            target_values = head.target_logits(values, x.detach(), labels)

        index = None
        positions = torch.where(owned, local_labels, torch.full_like(local_labels, -1))
        if sample_rate < 1.0:
            index = sample_classes(local_labels[owned], local_classes, sample_rate, generator)
            found = torch.searchsorted(index, safe_labels)
            positions = torch.where(owned, found, torch.full_like(found, -1))
        selected = local_classes if index is None else index.numel()

        # Log-sum-exp over this rank's (selected) classes without the true class, plus the true-class rows, in one
        # node: each parameter gets one gradient buffer.
        negatives, rows = chunked_logsumexp(
            _BlockLogits(head, target_values),
            head.logit_features(x),
            parameters,
            num_classes=selected,
            chunk_size=chunk_size,
            class_index=index,
            rows_per_class=rows_per_class,
            exclude_columns=positions,
            gather_classes=safe_labels,
        )
        # The margin-penalised true-class logit: with gradient on the rank that holds the class, the all-reduced
        # value elsewhere (so that the gather's backward, a sum over ranks, counts its gradient once).
        local_targets = head.target_logits(head.target_inputs(x, rows), x, labels)
        target_logits = torch.where(owned, local_targets, target_values)
        log_partition = torch.where(owned, torch.logaddexp(negatives, target_logits), negatives)
        if world_size > 1:
            log_partition = all_logsumexp(log_partition, process_group)
        loss = (log_partition - target_logits).mean()

        regularizer = head.regularizer(x)
        if isinstance(regularizer, Tensor) and world_size > 1:
            # Every rank adds the same term of the gathered embeddings, and the gather's backward sums over ranks:
            # keep the value, give each rank 1/world of the gradient.
            regularizer = regularizer.detach() + (regularizer - regularizer.detach()) / world_size
        return ShardedLoss(loss + regularizer, index)
