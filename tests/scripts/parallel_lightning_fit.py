"""Fit MarginModule with a ShardedMarginHead under Lightning's 2-process DDP on CPU (gloo); save weights + checkpoint.

Usage: ``python tests/scripts/parallel_lightning_fit.py OUT_DIR``. Lightning's "ddp" strategy re-launches this
script for rank 1, hence the ``__main__`` guard. Each rank writes ``OUT_DIR/rank<r>.pt`` (its state dict, which
holds the full head weight) and both write ``OUT_DIR/last.ckpt`` together. The model and data are built by the
functions below, which tests/test_parallel_lightning.py also uses for its single-process reference.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning_margin import MarginModule
from tests.helpers import IMAGE_SIZE, separable_images, tiny_backbone

NUM_CLASSES = 7  # 4 classes on rank 0, 3 on rank 1
PER_RANK_BATCH = 7
STEPS = 3
HEAD_KWARGS = {"scale": 16.0, "margin": 0.3}


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def make_module(sharded: bool) -> MarginModule:
    torch.manual_seed(0)
    return MarginModule(
        backbone=tiny_backbone(),
        num_classes=NUM_CLASSES,
        embedding_size=16,
        head="arcface",
        head_kwargs=HEAD_KWARGS,
        neck="linear",
        input_size=IMAGE_SIZE,
        optimizer=sgd,
        flip_test=False,
        sharded=sharded,  # the same initial weights; each rank keeps its rows in configure_model
    )


def make_loader(batch_size: int, num_replicas: int = 1, rank: int = 0) -> DataLoader:
    images, labels = separable_images(num_classes=NUM_CLASSES, per_class=6)
    dataset = TensorDataset(images, labels)
    sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)


def main(out_dir: Path) -> None:
    module = make_module(sharded=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        log_every_n_steps=1,  # the module's accuracy (the sharded head's all-to-all logits) runs every step
    )
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    trainer.fit(module, make_loader(PER_RANK_BATCH, num_replicas=2, rank=rank))
    state = module.state_dict()  # collective: every rank gathers the full head weight
    torch.save({k: v.detach().clone() for k, v in state.items()}, out_dir / f"rank{trainer.global_rank}.pt")
    trainer.save_checkpoint(out_dir / "last.ckpt")  # collective as well; rank 0 writes
    if dist.is_initialized():
        # gloo crashes at interpreter exit about 1 run in 8 unless the group is torn down explicitly.
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
