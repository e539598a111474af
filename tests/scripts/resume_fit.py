"""Callbacks for the preemption tests (tests/test_resume.py), named by class path in their ``lightning-margin`` configs.

``FaultAtStep`` stops a ``lightning-margin fit`` process at a chosen training step so that the test can kill it
there: it writes a marker file and waits inside the step until SIGTERM arrives (or forever, for SIGKILL).
``StepRecorder`` writes what each training step saw and the final state to a file, for the comparison with an
uninterrupted run. Run the CLI with this repository on ``PYTHONPATH``; as a script it is the CLI itself:

    python tests/scripts/resume_fit.py fit --config CONFIG [--ckpt_path last]
"""

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class FaultAtStep(Callback):
    """At the start of training step ``step`` (0-based ``global_step``), touch ``marker`` and wait for SIGTERM.

    Lightning's SIGTERM handler only sets ``trainer.received_sigterm``; once it is set this returns, the step runs to
    its end, and Lightning stops the fit there. Without a signal the process waits (a test SIGKILLs it).
    """

    def __init__(self, step: int, marker: str, timeout: float = 120.0) -> None:
        self.step = step
        self.marker = Path(marker)
        self.timeout = timeout

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        if trainer.global_step != self.step:
            return
        self.marker.write_text(str(trainer.global_step))
        deadline = time.monotonic() + self.timeout
        while not trainer.received_sigterm:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no signal arrived within {self.timeout} s at step {self.step}")
            time.sleep(0.01)


class StopAt(Callback):
    """Signals the fit at a hook boundary: the ``occurrence``-th call (1-based) of ``hook`` where
    ``trainer.global_step == step`` (any step when ``step`` is ``None``). Rank 0 sends it; the other ranks only count.

    ``signal="SIGTERM"`` goes to the whole process group, as a scheduler sends it (every DDP rank and DataLoader
    worker gets it, each at its own point of the step);
    ``"SIGTERM-rank0"`` to rank 0's process only, as ``docker stop`` sends it to the container's first process.
    ``signal="SIGKILL"`` kills the process group at once. ``marker`` is written first, so the test knows the stop
    point was reached.
    """

    HOOKS = (
        "on_sanity_check_start",
        "on_sanity_check_end",
        "on_train_epoch_start",
        "on_train_batch_end",
        "on_train_epoch_end",
        "on_validation_start",
        "on_validation_batch_end",
        "on_validation_end",
        "on_save_checkpoint",
    )

    SIGNALS = ("SIGTERM", "SIGTERM-rank0", "SIGKILL")

    def __init__(self, hook: str, step: int | None, marker: str, signal: str = "SIGTERM", occurrence: int = 1) -> None:
        if hook not in self.HOOKS:
            raise ValueError(f"hook must be one of {self.HOOKS}, got {hook!r}")
        if signal not in self.SIGNALS:
            raise ValueError(f"signal must be one of {self.SIGNALS}, got {signal!r}")
        self.hook, self.step, self.marker, self.signal, self.occurrence = hook, step, Path(marker), signal, occurrence
        self.calls = 0
        for name in self.HOOKS:
            if name == hook:
                setattr(self, name, self._maybe_stop)

    def _maybe_stop(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.step is not None and trainer.global_step != self.step:
            return
        self.calls += 1
        if self.calls != self.occurrence:
            return
        if trainer.global_rank != 0:
            return
        self.marker.write_text(f"{self.hook} {trainer.global_step}")
        if self.signal == "SIGKILL":
            os.killpg(os.getpgrp(), signal.SIGKILL)
        elif self.signal == "SIGTERM-rank0":
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            os.killpg(os.getpgrp(), signal.SIGTERM)
        time.sleep(0.2)  # let the handler run before the hook returns


class StepRecorder(Callback):
    """Records every training step (inputs, head hyperparameters, LR, Partial FC's classes) and the final state.

    ``path`` receives ``{"steps": {global_step: record}, "final": {...}}`` at the end of the fit (``torch.save``); with
    several ranks each writes ``<stem>.rank<r><suffix>``.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.steps: dict[int, dict[str, Any]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        images, labels = batch
        head = pl_module.head
        self.steps[trainer.global_step] = {
            "images": images.detach().clone(),
            "labels": labels.detach().clone(),
            "lambda_": head.lambda_,
            "margin": head.margin,
            "lr": [group["lr"] for group in trainer.optimizers[0].param_groups],
            "epoch": trainer.current_epoch,
            "rng": torch.get_rng_state(),  # the global stream the step's dropout and Partial FC draw from
        }

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        sampled = pl_module.head.sampled_classes
        self.steps[trainer.global_step - 1]["sampled_classes"] = None if sampled is None else sampled.clone()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        final = {
            "global_step": trainer.global_step,
            "state_dict": {key: value.detach().clone() for key, value in pl_module.state_dict().items()},
            "momentum": [optimizer.state[p]["momentum_buffer"].clone() for p in pl_module.parameters()],
            "lr": [group["lr"] for group in optimizer.param_groups],
            "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
            "lambda_": pl_module.head.lambda_,
            "margin": pl_module.head.margin,
            "sampled_classes": pl_module.head.sampled_classes.clone(),
        }
        path = self.path
        if trainer.world_size > 1:  # one file per rank: their batches and Partial FC samples differ
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        torch.save({"steps": self.steps, "final": final}, path)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from lightning_margin.cli import main

    sys.exit(main())
