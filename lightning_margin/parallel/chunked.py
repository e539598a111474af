"""ChunkedMarginHead: a margin head whose loss never holds the whole ``[batch, num_classes]`` logits at once."""

from __future__ import annotations

from typing import Any

from lightning_margin.heads import MarginHead
from lightning_margin.parallel.sharded import ShardedMarginHead

__all__ = ["ChunkedMarginHead"]


class ChunkedMarginHead(ShardedMarginHead):
    """A memory-lean margin loss: logits in blocks of ``chunk_size`` classes, recomputed in backward.

    The same loss and gradients as the wrapped head (to rounding), computed by
    :func:`~lightning_margin.parallel.functional.chunked_logsumexp`: the ``[B, C]`` logits, their gradient and a
    normalised copy of the ``[C, D]`` weight are never materialised, only ``[B, chunk_size]`` blocks, for one
    extra forward matrix product. A :class:`~lightning_margin.parallel.ShardedMarginHead` whose ``chunk_size``
    defaults to 32768, so it combines with sharding and Partial FC.

    Args:
        head: A head name or a head instance (an instance's parameters are shared, not copied, on one device).
        embedding_size: Width of the embeddings (with a head name).
        num_classes: Number of classes (with a head name).
        head_kwargs: Hyperparameters of the head when ``head`` is a name.
        chunk_size: Classes per block: larger blocks are faster (bigger matrix products), smaller ones leaner.
        **kwargs: ``sample_rate``, ``process_group``, ``compensate_ddp_average``, ``full_state_dict``.

    Example:
        >>> import torch
        >>> from lightning_margin.heads import ArcFace
        >>> plain = ArcFace(embedding_size=64, num_classes=1000)
        >>> lean = ChunkedMarginHead(plain, chunk_size=256)  # shares plain.weight
        >>> x, y = torch.randn(8, 64), torch.randint(0, 1000, (8,))
        >>> torch.allclose(lean(x, y), plain(x, y), atol=1e-5)
        True
    """

    def __init__(
        self,
        head: str | MarginHead = "arcface",
        embedding_size: int | None = None,
        num_classes: int | None = None,
        head_kwargs: dict[str, Any] | None = None,
        chunk_size: int = 32768,
        **kwargs: Any,
    ) -> None:
        super().__init__(head, embedding_size, num_classes, head_kwargs, chunk_size=chunk_size, **kwargs)
