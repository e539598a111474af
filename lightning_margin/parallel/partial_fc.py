"""PartialFC: a margin head that trains a random fraction of the class centres per step (plus the positives)."""

from __future__ import annotations

from typing import Any

from lightning_margin.heads import MarginHead
from lightning_margin.parallel.sharded import ShardedMarginHead

__all__ = ["PartialFC"]


class PartialFC(ShardedMarginHead):
    """Partial FC (An et al., 2022, "Killing Two Birds with One Stone: Efficient and Robust Training of Face
    Recognition CNNs by Partial FC"): each step's softmax runs over the batch's positive classes plus a uniform
    sample of the negatives, ``sample_rate`` of all centres in total.

    A :class:`~lightning_margin.parallel.ShardedMarginHead` whose ``sample_rate`` defaults to 0.1: sharded across
    ranks when a process group exists (each rank samples among its own classes), a single-device head otherwise.
    The weight stays one parameter and the sample is taken by indexing inside ``forward``, so the unsampled rows
    get an exactly zero gradient and the optimizer's per-row state stays aligned with its rows: nothing is
    swapped in and out between steps (with momentum or weight decay, unsampled rows keep moving by those, as in
    insightface's current Partial FC). ``sampled_classes`` holds the global ids used by the last step.
    With ``sample_rate=1.0`` it computes exactly the full head's loss and gradients.

    Args:
        head: A head name or a head instance (see :class:`~lightning_margin.parallel.ShardedMarginHead`).
        embedding_size: Width of the embeddings (with a head name).
        num_classes: Number of classes over all ranks (with a head name).
        head_kwargs: Hyperparameters of the head when ``head`` is a name.
        sample_rate: Fraction of the class centres per step, in (0, 1] (the paper uses 0.1).
        **kwargs: ``chunk_size``, ``process_group``, ``compensate_ddp_average``, ``full_state_dict``.

    Example:
        >>> import torch
        >>> head = PartialFC("cosface", embedding_size=64, num_classes=10_000, sample_rate=0.1)
        >>> loss = head(torch.randn(16, 64), torch.randint(0, 10_000, (16,)))
        >>> len(head.sampled_classes)
        1000
    """

    def __init__(
        self,
        head: str | MarginHead = "arcface",
        embedding_size: int | None = None,
        num_classes: int | None = None,
        head_kwargs: dict[str, Any] | None = None,
        sample_rate: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(head, embedding_size, num_classes, head_kwargs, sample_rate=sample_rate, **kwargs)
