"""Inside Lightning's Trainer: a 2-process DDP fit with a sharded head equals a single-process fit with the plain
head on the global batch, and its checkpoint (full weight, full momentum) resumes on one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from tests.scripts.parallel_lightning_fit import PER_RANK_BATCH, STEPS, make_loader, make_module

ROOT = Path(__file__).resolve().parents[1]


def test_sharded_head_in_a_two_process_lightning_fit_matches_one_process_and_resumes_on_one(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests/scripts/parallel_lightning_fit.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]

    module = make_module(sharded=False)
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=STEPS, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, make_loader(2 * PER_RANK_BATCH))
    single = module.state_dict()
    assert ranks[0].keys() == single.keys()  # the sharded run's state dict is in the plain head's format
    for key in single:
        torch.testing.assert_close(ranks[0][key], ranks[1][key], rtol=0, atol=0, msg=f"ranks differ in {key}")
        torch.testing.assert_close(ranks[0][key], single[key], rtol=1e-5, atol=1e-6, msg=f"DDP != single: {key}")
    assert not torch.equal(initial["head.weight"], single["head.weight"])  # training moved the head

    # The DDP checkpoint loads into a one-process sharded module, momentum rows included.
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    resumed = make_module(sharded=True)
    resumed.load_state_dict(checkpoint["state_dict"])
    torch.testing.assert_close(resumed.head.head.weight, single["head.weight"], rtol=1e-5, atol=1e-6)
    optimizer = resumed.configure_optimizers()
    optimizer.load_state_dict(checkpoint["optimizer_states"][0])
    reference = trainer.optimizers[0].state[module.head.weight]["momentum_buffer"]
    torch.testing.assert_close(optimizer.state[resumed.head.head.weight]["momentum_buffer"], reference)
