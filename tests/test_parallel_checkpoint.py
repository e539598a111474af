"""Sharded weights split, merge and re-split for any world size; shard files re-assemble; checkpoints stay in the
unsharded head's format (no processes needed: shards are cut offline)."""

from __future__ import annotations

import itertools

import pytest
import torch

from lightning_margin.heads import SubCenterArcFace, create_head
from lightning_margin.parallel import (
    ShardedMarginHead,
    load_weight_shards,
    merge_shards,
    reshard,
    save_weight_shards,
    split_rows,
)
from lightning_margin.parallel.functional import shard_bounds


@pytest.mark.parametrize("num_classes", [1, 7, 12, 100])
@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 7])
def test_shards_are_contiguous_cover_every_class_once_and_differ_by_at_most_one(num_classes, world_size):
    if world_size > num_classes:
        with pytest.raises(ValueError, match=f"cannot shard num_classes={num_classes} over world_size={world_size}"):
            shard_bounds(num_classes, world_size, 0)
        return
    bounds = [shard_bounds(num_classes, world_size, rank) for rank in range(world_size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == num_classes
    assert all(end == next_start for (_, end), (next_start, _) in itertools.pairwise(bounds))
    sizes = [end - start for start, end in bounds]
    assert max(sizes) - min(sizes) <= 1 and sorted(sizes, reverse=True) == sizes


@pytest.mark.parametrize(("old", "new"), [(1, 4), (4, 1), (3, 5), (5, 3), (8, 8)])
def test_resharding_equals_splitting_the_full_matrix(old, new):
    num_classes, rows_per_class = 17, 3
    full = torch.arange(num_classes * rows_per_class * 2).view(num_classes * rows_per_class, 2)
    shards = [split_rows(full, num_classes, old, rank) for rank in range(old)]
    assert torch.equal(merge_shards(shards), full)
    resplit = reshard(shards, num_classes, new)
    for rank, shard in enumerate(resplit):
        start, end = shard_bounds(num_classes, new, rank)
        # Row j*k .. j*k+k-1 belongs to class j: a shard never splits a class's sub-centres.
        assert torch.equal(shard, full[start * rows_per_class : end * rows_per_class])


def test_split_rows_rejects_a_tensor_that_is_not_class_major():
    with pytest.raises(ValueError, match="a multiple of num_classes=4 rows, got 6"):
        split_rows(torch.zeros(6, 2), num_classes=4, world_size=2, rank=0)


def offline_shards(full_head, world_size):
    shards = []
    for rank in range(world_size):
        copy = create_head("subcenter_arcface", 4, 10, num_subcenters=2)
        copy.load_state_dict(full_head.state_dict())
        shards.append(ShardedMarginHead(copy, full_state_dict=False).shard(rank=rank, world_size=world_size))
    return shards


def test_shard_files_reassemble_the_full_weight_and_load_into_any_world_size(tmp_path):
    torch.manual_seed(0)
    full = SubCenterArcFace(embedding_size=4, num_classes=10, num_subcenters=2)
    for shard in offline_shards(full, world_size=3):
        save_weight_shards(shard, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [f"shard-0000{r}-of-00003.pt" for r in range(3)]
    tensors = load_weight_shards(tmp_path / "run")
    assert torch.equal(tensors["weight"], full.weight.detach())

    # Resume on 4 ranks: each keeps its own rows of the re-assembled matrix.
    for rank in range(4):
        head = ShardedMarginHead(SubCenterArcFace(4, 10, num_subcenters=2)).shard(rank=rank, world_size=4)
        head.load_state_dict({**tensors}, strict=False)
        start, end = shard_bounds(10, 4, rank)
        assert torch.equal(head.head.weight.detach(), full.weight.detach()[2 * start : 2 * end])


def test_incomplete_or_mixed_shard_files_are_rejected_by_name(tmp_path):
    torch.manual_seed(0)
    full = SubCenterArcFace(embedding_size=4, num_classes=10, num_subcenters=2)
    shards = offline_shards(full, world_size=3)
    save_weight_shards(shards[0], tmp_path / "missing")
    save_weight_shards(shards[2], tmp_path / "missing")
    with pytest.raises(ValueError, match=r"lacks the shards of ranks \[1\] \(of 3\)"):
        load_weight_shards(tmp_path / "missing")
    save_weight_shards(shards[0], tmp_path / "mixed")
    save_weight_shards(offline_shards(full, world_size=2)[1], tmp_path / "mixed")
    with pytest.raises(ValueError, match=r"shard-00001-of-00002.pt is a shard of 10 classes over 2 ranks"):
        load_weight_shards(tmp_path / "mixed")
    with pytest.raises(ValueError, match="no shard files"):
        load_weight_shards(tmp_path / "empty")


def test_checkpoints_use_the_unsharded_heads_keys_and_load_both_ways():
    torch.manual_seed(1)
    plain = create_head("curricularface", embedding_size=4, num_classes=9)
    plain.t.fill_(0.25)
    wrapped = ShardedMarginHead("curricularface", embedding_size=4, num_classes=9)
    wrapped.load_state_dict(plain.state_dict())
    assert wrapped.state_dict().keys() == plain.state_dict().keys() == {"weight", "t"}
    assert torch.equal(wrapped.head.weight, plain.weight) and float(wrapped.head.t) == 0.25
    again = create_head("curricularface", embedding_size=4, num_classes=9)
    again.load_state_dict(wrapped.state_dict())
    assert torch.equal(again.weight, plain.weight)

    # A shard (offline rank 1 of 2: classes 5..8) keeps its rows of a full checkpoint, refuses other shapes.
    shard = ShardedMarginHead(create_head("curricularface", embedding_size=4, num_classes=9)).shard(
        rank=1, world_size=2
    )
    shard.load_state_dict(plain.state_dict())
    assert torch.equal(shard.head.weight, plain.weight[5:])
    with pytest.raises(ValueError, match=r"weight has 7 rows: neither the full 9 rows of 9 classes nor this rank's 4"):
        shard.load_state_dict({"weight": torch.zeros(7, 4), "t": torch.zeros(())})
