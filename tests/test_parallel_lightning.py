"""Inside Lightning's Trainer: a 2-process DDP fit with a sharded head equals a single-process fit with the plain
head on the global batch, and its checkpoint (full weight, full momentum) resumes on one process."""

from __future__ import annotations

import torch

from tests.helpers import ROOT, quiet_trainer, run_rank_script
from tests.scripts.parallel_lightning_fit import PER_RANK_BATCH, STEPS, make_loader, make_module


def test_sharded_head_in_a_two_process_lightning_fit_matches_one_process_and_resumes_on_one(tmp_path):
    ranks = run_rank_script(ROOT / "tests/scripts/parallel_lightning_fit.py", tmp_path, timeout=400)

    module = make_module(sharded=False)
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = quiet_trainer(max_steps=STEPS)
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
