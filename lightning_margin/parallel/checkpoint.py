"""Re-assembling and re-splitting class-sharded weights: full checkpoints, per-rank shard files, new world sizes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_margin._validation import check_integer
from lightning_margin.parallel.functional.chunked import class_rows
from lightning_margin.parallel.functional.distributed import shard_bounds
from lightning_margin.parallel.sharded import ShardedMarginHead

__all__ = ["load_weight_shards", "merge_shards", "reshard", "save_weight_shards", "split_rows"]

_SHARD_PATTERN = "shard-{rank:05d}-of-{world_size:05d}.pt"


def split_rows(full: Tensor, num_classes: int, world_size: int, rank: int) -> Tensor:
    """Rank ``rank``'s rows of a class-major tensor (``[num_classes * k, ...]``, ``k`` rows per class), split as
    :class:`~lightning_margin.parallel.ShardedMarginHead` splits its classes (a view, no copy).

    Example:
        >>> split_rows(torch.arange(10), num_classes=5, world_size=2, rank=1)  # 2 rows per class; rank 1: 3, 4
        tensor([6, 7, 8, 9])
    """
    num_classes = check_integer("num_classes", num_classes)
    if full.ndim == 0 or full.shape[0] % num_classes:
        rows = full.shape[0] if full.ndim else 0
        raise ValueError(f"a class-major tensor has a multiple of num_classes={num_classes} rows, got {rows}")
    start, end = shard_bounds(num_classes, world_size, rank)
    return class_rows(full, slice(start, end), full.shape[0] // num_classes)


def merge_shards(shards: Sequence[Tensor]) -> Tensor:
    """The full class-major tensor from every rank's rows, given in rank order.

    Example:
        >>> merge_shards([torch.tensor([0, 1]), torch.tensor([2])])
        tensor([0, 1, 2])
    """
    if not shards:
        raise ValueError("merge_shards needs at least one shard")
    return torch.cat(list(shards))


def reshard(shards: Sequence[Tensor], num_classes: int, world_size: int) -> list[Tensor]:
    """Re-split shards written by one number of ranks for ``world_size`` ranks (e.g. resume 8 GPUs on 4).

    Example:
        >>> [s.tolist() for s in reshard([torch.arange(4), torch.arange(4, 7)], num_classes=7, world_size=3)]
        [[0, 1, 2], [3, 4], [5, 6]]
    """
    full = merge_shards(shards)
    return [split_rows(full, num_classes, world_size, rank).clone() for rank in range(world_size)]


def save_weight_shards(head: ShardedMarginHead, directory: str | Path) -> Path:
    """Write this rank's rows of the head's class-major parameters to ``directory`` (call on every rank).

    Each rank writes ``shard-<rank>-of-<world size>.pt`` holding its rows and where they belong; no rank ever
    holds the full matrix, which is the point for classifiers too large for one device. Returns the file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / _SHARD_PATTERN.format(rank=head.rank, world_size=head.world_size)
    payload = {
        "num_classes": head.num_classes,
        "world_size": head.world_size,
        "rank": head.rank,
        "class_start": head.class_start,
        "class_end": head.class_end,
        "tensors": {name: getattr(head.head, name).detach().cpu() for name in head._row_parameter_names()},
    }
    torch.save(payload, path)
    return path


def load_weight_shards(directory: str | Path) -> dict[str, Tensor]:
    """The full tensors (``{"weight": [num_classes * k, D], ...}``) from the shard files of one run.

    The result loads into a :class:`~lightning_margin.parallel.ShardedMarginHead` of any world size (each
    rank keeps its rows) or into an unsharded head. Raises ``ValueError`` naming the file when shards are
    missing, duplicated, or from runs of different sizes.
    """
    paths = sorted(Path(directory).glob("shard-*-of-*.pt"))
    if not paths:
        raise ValueError(f"no shard files (shard-<rank>-of-<world size>.pt) in {directory}")
    payloads: list[tuple[Path, dict[str, Any]]] = [(path, torch.load(path, weights_only=True)) for path in paths]
    first_path, first = payloads[0]
    world_size, num_classes = first["world_size"], first["num_classes"]
    by_rank: dict[int, dict[str, Any]] = {}
    for path, payload in payloads:
        if (payload["world_size"], payload["num_classes"]) != (world_size, num_classes):
            raise ValueError(
                f"{path} is a shard of {payload['num_classes']} classes over {payload['world_size']} ranks, but "
                f"{first_path} is one of {num_classes} classes over {world_size} ranks: mixed runs in {directory}"
            )
        expected = shard_bounds(num_classes, world_size, payload["rank"])
        if (payload["class_start"], payload["class_end"]) != expected:
            raise ValueError(f"{path} holds classes {payload['class_start']}..{payload['class_end']}, not {expected}")
        by_rank[payload["rank"]] = payload
    missing = sorted(set(range(world_size)) - set(by_rank))
    if missing:
        raise ValueError(f"{directory} lacks the shards of ranks {missing} (of {world_size})")
    names = first["tensors"].keys()
    return {name: merge_shards([by_rank[rank]["tensors"][name] for rank in range(world_size)]) for name in names}
