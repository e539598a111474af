"""The shared state of every verification metric: one cosine score and one same/different label per pair."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_margin.metrics.functional import cosine_scores

__all__ = ["PairScoreMetric"]


class PairScoreMetric(Metric):
    """Base class of the verification metrics: accumulates pair scores, synchronised across processes by concatenation.

    ``update`` L2-normalises both embeddings of each pair and keeps only their cosine similarity (one float per pair,
    whatever the embedding size). Under DDP the states are gathered with ``dist_reduce_fx="cat"``, rank by rank.

    The k-fold accuracy depends on the order of the pairs, and a ``DistributedSampler`` both interleaves the pairs
    across ranks and pads the last batch with repeated pairs. Pass ``pair_index`` (each pair's position in the
    verification set) to every ``update`` and ``compute`` restores the set's order and drops the repeats, giving
    exactly the single-process result. Without it, pairs are taken in the order gathered (rank 0's first).

    Subclasses implement ``compute`` on :meth:`pairs`.

    Example:
        >>> class MeanScore(PairScoreMetric):
        ...     def compute(self):
        ...         return self.pairs()[0].mean()
        >>> metric = MeanScore()
        >>> metric.update(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([False]))
        >>> metric.compute()
        tensor(0.)
    """

    is_differentiable = False
    full_state_update = False

    scores: list[Tensor]
    issame: list[Tensor]
    pair_index: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        # uint8 rather than bool: not every torch.distributed backend gathers bool tensors.
        self.add_state("issame", default=[], dist_reduce_fx="cat")
        self.add_state("pair_index", default=[], dist_reduce_fx="cat")

    def update(
        self, embeddings1: Tensor, embeddings2: Tensor, issame: Tensor, pair_index: Tensor | None = None
    ) -> None:
        """Add a batch of pairs.

        Args:
            embeddings1: ``(batch, embedding_size)`` embeddings of the first image of each pair (any norm).
            embeddings2: ``(batch, embedding_size)`` embeddings of the second image of each pair.
            issame: ``(batch,)`` bool (or 0/1) whether each pair shows one identity.
            pair_index: optional ``(batch,)`` position of each pair in the verification set (see the class note).
        """
        scores = cosine_scores(embeddings1.detach(), embeddings2.detach())
        issame = issame.detach().reshape(-1)
        if scores.numel() != issame.numel():
            raise ValueError(f"got {scores.numel()} pairs of embeddings but {issame.numel()} `issame` labels")
        if issame.dtype != torch.bool and bool(((issame != 0) & (issame != 1)).any()):
            raise ValueError(f"`issame` must hold only 0/1 (or True/False), got values {issame.unique().tolist()}")
        if pair_index is not None:
            pair_index = pair_index.detach().reshape(-1)
            if pair_index.numel() != scores.numel():
                raise ValueError(f"got {scores.numel()} pairs but {pair_index.numel()} `pair_index` values")
            if len(self.pair_index) != len(self.scores):
                raise ValueError("`pair_index` must be passed to every update or to none: earlier updates had none")
            self.pair_index.append(pair_index.long())
        elif len(self.pair_index) > 0:
            raise ValueError("`pair_index` must be passed to every update or to none: earlier updates had it")
        self.scores.append(scores)
        self.issame.append(issame.to(torch.uint8))

    def pairs(self) -> tuple[Tensor, Tensor]:
        """All pairs seen so far, in the verification set's order: ``(scores, issame)``, scores float, issame bool.

        Call it inside ``compute`` (where states are already synchronised) or after :meth:`sync`.
        """
        if _num_items(self.scores) == 0:
            raise ValueError(f"{type(self).__name__} has no pairs: call update() before compute()")
        scores = dim_zero_cat(self.scores)
        issame = dim_zero_cat(self.issame).bool()
        if _num_items(self.pair_index) == 0:
            return scores, issame
        pair_index = dim_zero_cat(self.pair_index).long()
        if pair_index.numel() != scores.numel():
            raise ValueError(
                f"{pair_index.numel()} `pair_index` values for {scores.numel()} pairs: some process updated without "
                "`pair_index`; pass it on every process or on none"
            )
        # Stable sort, then keep the first copy of each index: the padding a DistributedSampler adds repeats pairs.
        order = torch.argsort(pair_index, stable=True)
        sorted_index = pair_index[order]
        first = torch.ones_like(sorted_index, dtype=torch.bool)
        first[1:] = sorted_index[1:] != sorted_index[:-1]
        order = order[first]
        return scores[order], issame[order]


def _num_items(state: list[Tensor] | Tensor) -> int:
    """Number of values in a list state, before (a list of tensors) or after synchronisation (one tensor)."""
    if isinstance(state, Tensor):
        return state.numel()
    return sum(item.numel() for item in state)
