"""Every registered head, and a head a user registers, sharded over 2 gloo ranks; tests/test_heads_contract.py checks.

Usage: ``python tests/scripts/parallel_heads_contract.py OUTDIR`` writes ``OUTDIR/rank<r>.pt`` per rank. The
user's head (:class:`UserHead`) is defined here, built only from :class:`~lightning_margin.heads.MarginHead`'s
documented pieces, and registered by :func:`register_user_head` (in this script's ranks, and by the test's fixture);
importing this module registers nothing. The problems are defined here and recomputed by the test with the plain
heads in one process.
"""

from __future__ import annotations

import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_margin.functional import cosface_margin
from lightning_margin.heads import CosineMarginHead, create_head, list_heads, register_head
from lightning_margin.parallel import PartialFC, ShardedMarginHead
from tests.helpers import MARGIN_REGIME_HEAD_KWARGS

WORLD_SIZE = 2
NUM_CLASSES = 11  # 6 classes on rank 0, 5 on rank 1
EMBEDDING_SIZE = 6
BATCH_SIZES = (5, 3)
CALLS = 2  # training-mode calls: the second one sees the statistics the first one moved
USER_HEAD = "user_shifted_cosface"
HEAD_KWARGS = {**MARGIN_REGIME_HEAD_KWARGS, "subcenter_arcface": {"num_subcenters": 3}}
# (wrapper, options) run on 2 ranks for every head.
VARIANTS = [("sharded", {}), ("partial_fc", {"sample_rate": 1.0, "chunk_size": 2})]


class UserHead(CosineMarginHead):
    """A head a user might write: CosFace's margin scaled by a running statistic, plus a penalty on hard negatives.

    True-class logit ``s (cos theta_y - m (1 + r) / 2)``, ``r`` the running mean of ``cos theta_y`` (half of each
    batch's mean per training call); a negative whose logit exceeds the true class's gets ``s * shift`` added.
    Only the documented pieces are overridden, not ``_logits``.
    """

    mean_cos: Tensor

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 8.0, margin: float = 0.3, shift: float = 0.1
    ) -> None:
        super().__init__(embedding_size, num_classes)
        self.scale, self.margin, self.shift = scale, margin, shift
        self.register_buffer("mean_cos", torch.zeros(()))

    def apply_margin(self, cos: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        return cosface_margin(cos, self.margin * (1.0 + self.mean_cos.to(cos.dtype)) / 2)

    def non_target_logits(self, logits: Tensor, target_logits: Tensor) -> Tensor:
        return torch.where(logits > target_logits.unsqueeze(1), logits + self.scale * self.shift, logits)

    def update_statistics(self, x: Tensor, labels: Tensor, inputs: Tensor) -> None:
        self.mean_cos.mul_(0.5).add_(0.5 * inputs[:, 0].clamp(-1.0, 1.0).mean().to(self.mean_cos.dtype))

    def _hyperparameter_names(self) -> list[str]:
        return ["scale", "margin", "shift"]


def register_user_head() -> None:
    """``@register_head(USER_HEAD)`` on :class:`UserHead` (undo it by removing the name from the registry)."""
    register_head(USER_HEAD)(UserHead)


def make_problem(name: str):
    """The same full head (float64) and global batch on every process and in the single-process reference."""
    torch.manual_seed(1234)
    head = create_head(name, EMBEDDING_SIZE, NUM_CLASSES, **HEAD_KWARGS.get(name, {})).double()
    embeddings = 3 * torch.randn(sum(BATCH_SIZES), EMBEDDING_SIZE, dtype=torch.float64)
    labels = torch.tensor([0, 10, 3, 3, 7, 10, 1, 5])  # both shards' classes, repeats, uneven per rank
    return head, embeddings, labels


def rank_rows(rank: int) -> slice:
    start = sum(BATCH_SIZES[:rank])
    return slice(start, start + BATCH_SIZES[rank])


def run_case(rank: int, name: str, wrapper: str, options: dict) -> dict:
    head, embeddings, labels = make_problem(name)
    build = PartialFC if wrapper == "partial_fc" else ShardedMarginHead
    # compensate_ddp_average=False: the plain gradient of the global mean loss (no DDP averaging to undo here).
    sharded = build(head, compensate_ddp_average=False, **options)  # the process group exists: keeps this rank's rows
    calls = []
    for _ in range(CALLS):
        x = embeddings[rank_rows(rank)].clone().requires_grad_()
        sharded.zero_grad()
        loss = sharded(x, labels[rank_rows(rank)])
        loss.backward()
        calls.append(
            {
                "loss": loss.detach(),
                "embedding_grad": x.grad,
                "grads": {n: p.grad.clone() for n, p in sharded.head.named_parameters()},
                "buffers": {n: b.clone() for n, b in sharded.head.named_buffers()},
            }
        )
    return {"class_range": (sharded.class_start, sharded.class_end), "calls": calls}


def worker(rank: int, outdir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{outdir}/rendezvous", rank=rank, world_size=WORLD_SIZE,
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    try:
        torch.set_num_threads(1)
        register_user_head()
        results = {
            (name, wrapper): run_case(rank, name, wrapper, options)
            for name in list_heads()
            for wrapper, options in VARIANTS
        }
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
