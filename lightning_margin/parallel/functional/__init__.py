"""Pure functions behind the scalable heads: collectives and the sharded / sampled / chunked margin loss."""

from lightning_margin.parallel.functional.chunked import chunked_logsumexp, class_rows, row_ids
from lightning_margin.parallel.functional.distributed import (
    all_gather_rows,
    all_gather_with_grad,
    all_logsumexp,
    check_inputs_on_every_rank,
    rank_and_world_size,
    shard_bounds,
)
from lightning_margin.parallel.functional.partial_fc import check_sample_rate, num_sampled_classes, sample_classes
from lightning_margin.parallel.functional.sharded import ShardedLoss, sharded_margin_cross_entropy

__all__ = [
    "ShardedLoss",
    "all_gather_rows",
    "all_gather_with_grad",
    "all_logsumexp",
    "check_inputs_on_every_rank",
    "check_sample_rate",
    "chunked_logsumexp",
    "class_rows",
    "num_sampled_classes",
    "rank_and_world_size",
    "row_ids",
    "sample_classes",
    "shard_bounds",
    "sharded_margin_cross_entropy",
]
