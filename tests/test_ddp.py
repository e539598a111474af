"""A real 2-process DDP fit on CPU equals a single-process fit on the same global batch."""

import torch

from tests.helpers import ROOT, quiet_trainer, run_rank_script
from tests.scripts.ddp_setup import PER_RANK_BATCH, STEPS, make_loader, make_module


def test_two_process_ddp_matches_single_process_on_the_global_batch(tmp_path):
    rank0, rank1 = run_rank_script(ROOT / "tests/scripts/ddp_fit.py", tmp_path, timeout=300)

    module = make_module()
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = quiet_trainer(max_steps=STEPS)
    trainer.fit(module, make_loader(2 * PER_RANK_BATCH))
    single = module.state_dict()

    for key in single:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0, msg=f"ranks differ in {key}")
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-5, atol=1e-6, msg=f"DDP != single in {key}")
    assert any(not torch.equal(initial[k], single[k]) for k in single)  # training really moved the weights
