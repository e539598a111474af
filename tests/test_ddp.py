"""A real 2-process DDP fit on CPU equals a single-process fit on the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from tests.scripts.ddp_setup import PER_RANK_BATCH, STEPS, make_loader, make_module

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_ddp_matches_single_process_on_the_global_batch(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The rank-1 process is re-launched by Lightning from this command line, so it must be a script, not pytest.
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests/scripts/ddp_fit.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)

    module = make_module()
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, make_loader(2 * PER_RANK_BATCH))
    single = module.state_dict()

    for key in single:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0, msg=f"ranks differ in {key}")
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-5, atol=1e-6, msg=f"DDP != single in {key}")
    assert any(not torch.equal(initial[k], single[k]) for k in single)  # training really moved the weights
