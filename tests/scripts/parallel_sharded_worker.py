"""Two gloo ranks train sharded heads under DistributedDataParallel; tests/test_parallel_sharded.py checks them.

Usage: ``python tests/scripts/parallel_sharded_worker.py OUTDIR`` writes ``OUTDIR/rank<r>.pt`` per rank. The
problems (seeds, shapes, cases) are defined here and imported by the test, which recomputes everything in a
single process with the plain heads.
"""

from __future__ import annotations

import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lightning_margin.heads import create_head
from lightning_margin.parallel import ShardedMarginHead, ignore_sharded_parameters

WORLD_SIZE = 2
NUM_CLASSES = 11  # 6 classes on rank 0, 5 on rank 1
EMBEDDING_SIZE = 8
IN_FEATURES = 6
BATCH_SIZES = (5, 3)  # uneven per-rank batches, as a last batch can be
STEPS = 2
LEARNING_RATE = 0.5
MOMENTUM = 0.9
HEAD_KWARGS = {
    "arcface": {"scale": 16.0, "margin": 0.5},
    "cosface": {"scale": 16.0, "margin": 0.35},
    "sphereface": {"margin": 4, "lambda_": 5.0},
    "lsoftmax": {"margin": 2, "lambda_": 5.0},
    "subcenter_arcface": {"scale": 16.0, "num_subcenters": 3},
    "curricularface": {"scale": 16.0, "momentum": 0.5},
    "adaface": {"scale": 16.0, "momentum": 0.5},
    "magface": {"scale": 16.0, "regularizer_weight": 5.0},
    "softmax": {},
    "combined": {"scale": 16.0},
    "normface": {},
    "modified_softmax": {},
}
# (head, options): every head sharded; a chunked and two Partial FC variants for a few.
CASES = [(name, {}) for name in HEAD_KWARGS] + [
    ("arcface", {"chunk_size": 2}),
    ("subcenter_arcface", {"chunk_size": 4}),
    ("curricularface", {"chunk_size": 3}),
    ("softmax", {"chunk_size": 4}),
    ("cosface", {"sample_rate": 1.0, "chunk_size": 5}),
    ("arcface", {"sample_rate": 0.5}),
    ("cosface", {"sample_rate": 0.4, "chunk_size": 2}),
]


def make_problem(name: str):
    """The same head, backbone and global batches on every process (and in the single-process reference)."""
    torch.manual_seed(1234)
    head = create_head(name, EMBEDDING_SIZE, NUM_CLASSES, **HEAD_KWARGS[name]).double()
    backbone = nn.Linear(IN_FEATURES, EMBEDDING_SIZE).double()
    total = sum(BATCH_SIZES)
    inputs = [3 * torch.randn(total, IN_FEATURES, dtype=torch.float64) for _ in range(STEPS)]
    labels = [torch.randint(0, NUM_CLASSES, (total,)) for _ in range(STEPS)]
    return head, backbone, inputs, labels


def rank_rows(rank: int) -> slice:
    start = sum(BATCH_SIZES[:rank])
    return slice(start, start + BATCH_SIZES[rank])


def make_optimizer(parameters) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=LEARNING_RATE, momentum=MOMENTUM)


class Model(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, inputs, labels):
        return self.head(self.backbone(inputs), labels)


def train_case(rank: int, name: str, options: dict) -> dict:
    head, backbone, inputs, labels = make_problem(name)
    sharded = ShardedMarginHead(head, **options)  # the process group exists: keeps this rank's rows
    model = Model(backbone, sharded)
    ignored = ignore_sharded_parameters(model)
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = sharded.attach_optimizer(make_optimizer(model.parameters()))
    rows = rank_rows(rank)
    losses, sampled = [], []
    for step in range(STEPS):
        torch.manual_seed(step)  # Partial FC's negatives
        optimizer.zero_grad()
        loss = ddp(inputs[step][rows], labels[step][rows])
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        sampled.append(sharded.sampled_classes)
    return {
        "ignored": ignored,
        "losses": torch.stack(losses),
        "sampled": sampled,
        "backbone": {k: v.detach().clone() for k, v in backbone.state_dict().items()},
        "shard": sharded.head.weight.detach().clone(),
        "class_range": (sharded.class_start, sharded.class_end),
        "state_dict": sharded.state_dict(),  # collective: the full weight
        "optimizer": optimizer.state_dict(),  # collective: full momentum rows
        "logits": sharded.logits(backbone(inputs[0][rows]).detach()),  # collective: all-to-all
    }


def reload_case(rank: int, state_dict: dict, optimizer_state: dict) -> dict:
    """Load a full checkpoint into a fresh sharded head and optimizer: each rank must keep its rows."""
    head, backbone, _, _ = make_problem("arcface")
    sharded = ShardedMarginHead(head)
    sharded.load_state_dict(state_dict)
    model = Model(backbone, sharded)
    optimizer = sharded.attach_optimizer(make_optimizer(model.parameters()))
    optimizer.load_state_dict(optimizer_state)
    return {"weight": sharded.head.weight.detach().clone(), "momentum": optimizer.state[sharded.head.weight]}


def bad_inputs(rank: int) -> dict[str, str]:
    """Each problem exists on one rank only; every rank must raise (and none hang in a collective)."""
    errors = {}
    head = ShardedMarginHead("arcface", EMBEDDING_SIZE, NUM_CLASSES)
    embeddings = torch.randn(4, EMBEDDING_SIZE)
    labels = torch.tensor([0, 1, 2, 3])
    for problem in ("label_too_large", "negative_label", "nan_embedding", "wrong_width"):
        x, y = embeddings.clone(), labels.clone()
        if rank == 1 and problem == "label_too_large":
            y[2] = NUM_CLASSES + 4
        if rank == 0 and problem == "negative_label":
            y[0] = -1
        if rank == 1 and problem == "nan_embedding":
            x[3, 0] = float("nan")
        if rank == 0 and problem == "wrong_width":
            x = torch.randn(4, EMBEDDING_SIZE + 1)
        try:
            head(x, y)
            errors[problem] = "no error"
        except ValueError as error:
            errors[problem] = str(error)
    for problem, build in (
        ("too_few_classes", lambda: ShardedMarginHead("arcface", EMBEDDING_SIZE, 1)),
        ("sample_rate_zero", lambda: ShardedMarginHead("arcface", EMBEDDING_SIZE, NUM_CLASSES, sample_rate=0.0)),
        ("sample_rate_above_one", lambda: ShardedMarginHead("arcface", EMBEDDING_SIZE, NUM_CLASSES, sample_rate=1.5)),
    ):
        try:
            build()
            errors[problem] = "no error"
        except ValueError as error:
            errors[problem] = str(error)
    # Still in step: a collective after all the errors completes on both ranks.
    alive = torch.ones(1)
    dist.all_reduce(alive)
    errors["alive_ranks"] = str(int(alive.item()))
    return errors


def worker(rank: int, outdir: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{outdir}/rendezvous",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=60),
    )
    try:
        torch.set_num_threads(1)
        results = {"cases": [train_case(rank, name, options) for name, options in CASES]}
        first = results["cases"][0]
        results["reloaded"] = reload_case(rank, first["state_dict"], first["optimizer"])
        results["errors"] = bad_inputs(rank)
        torch.manual_seed(5)
        built = ShardedMarginHead("arcface", EMBEDDING_SIZE, NUM_CLASSES)  # only this rank's rows are drawn
        results["built"] = {"weight": built.head.weight.detach().clone(), "next_draw": torch.rand(3)}
        torch.save(results, Path(outdir) / f"rank{rank}.pt")
    except Exception:
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.multiprocessing.start_processes(
        worker, args=(sys.argv[1],), nprocs=WORLD_SIZE, join=True, start_method="fork"
    )
