"""Scale and speed: class-centre sharding across ranks, Partial FC, a memory-lean chunked loss, memory accounting.

Every class wraps a head of :mod:`lightning_margin.heads` and computes its loss with
:func:`~lightning_margin.parallel.functional.sharded_margin_cross_entropy`:

- :class:`ShardedMarginHead`: each DDP rank holds ``num_classes / world_size`` class centres (plus the options
  below); checkpoints hold the full weight, so runs resume on any number of ranks.
- :class:`PartialFC`: a sample of the negative centres per step (``sample_rate``, default 0.1).
- :class:`ChunkedMarginHead`: never materialises the ``[batch, num_classes]`` logits (``chunk_size``).
"""

from lightning_margin.parallel import functional
from lightning_margin.parallel.checkpoint import (
    load_weight_shards,
    merge_shards,
    reshard,
    save_weight_shards,
    split_rows,
)
from lightning_margin.parallel.chunked import ChunkedMarginHead
from lightning_margin.parallel.memory import TensorMemoryTracker
from lightning_margin.parallel.partial_fc import PartialFC
from lightning_margin.parallel.sharded import ShardedMarginHead, ignore_sharded_parameters

__all__ = [
    "ChunkedMarginHead",
    "PartialFC",
    "ShardedMarginHead",
    "TensorMemoryTracker",
    "functional",
    "ignore_sharded_parameters",
    "load_weight_shards",
    "merge_shards",
    "reshard",
    "save_weight_shards",
    "split_rows",
]
