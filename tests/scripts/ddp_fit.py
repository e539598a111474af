"""Fit MarginModule with 2-process DDP on CPU (gloo) and save each rank's final weights.

Usage: python tests/scripts/ddp_fit.py OUT_DIR. Lightning's "ddp" strategy re-launches this script for rank 1,
hence the __main__ guard. Each rank writes OUT_DIR/rank<r>.pt. The model and data come from
tests/scripts/ddp_setup.py so that the test's single-process run builds exactly the same ones.
"""

import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.scripts.ddp_setup import PER_RANK_BATCH, STEPS, make_loader, make_module


def main(out_dir: Path) -> None:
    module = make_module()
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
    )
    # Lightning's automatic sampler always shuffles training data; an unshuffled one makes the global batch of
    # step k exactly samples [k*16, (k+1)*16): rank 0 takes the even ones, rank 1 the odd ones.
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    trainer.fit(module, make_loader(PER_RANK_BATCH, num_replicas=2, rank=rank))
    torch.save(
        {k: v.detach().clone() for k, v in module.state_dict().items()}, out_dir / f"rank{trainer.global_rank}.pt"
    )
    if dist.is_initialized():
        # gloo crashes at interpreter exit about 1 run in 8 unless the group is torn down explicitly.
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
