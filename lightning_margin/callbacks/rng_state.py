"""Random state in checkpoints: a resumed fit continues the random streams an uninterrupted one would have used."""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection
from torch.utils.data import DataLoader

from lightning_margin.callbacks._sigterm import AgreedSigterm

__all__ = ["RNGStateCheckpoint", "collect_rng_states", "finish_epoch_end_checkpoint", "set_rng_states"]


def collect_rng_states() -> dict[str, Any]:
    """The global random states of this process: torch's CPU generator, the current CUDA device's, NumPy's and
    Python's.

    Everything is a tensor or a plain Python value, so checkpoints holding it still load with
    ``torch.load(..., weights_only=True)``. The CUDA state is only read once CUDA is initialised (reading it
    would initialise CUDA, and a generator never used has nothing to restore).

    Example:
        >>> states = collect_rng_states()
        >>> first = torch.rand(3)
        >>> set_rng_states(states)
        >>> torch.equal(torch.rand(3), first)
        True
    """
    key, numpy_position, has_gauss, cached_gaussian = np.random.get_state()[1:]
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "position": int(numpy_position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`collect_rng_states` returned (the CUDA state to the current device)."""
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["key"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


class RNGStateCheckpoint(Callback):
    """Saves the global random states in checkpoints and restores them when a fit resumes, on every rank.

    Lightning restores weights, optimizer, LR schedulers, loop progress and callback states, but not the random
    generators: after a resume, dropout masks, Partial FC's sampled classes and augmentations drawn in the main
    process (``random_shift``, the flip of ``normalize_on_device``) would follow another stream than in an
    uninterrupted run. With this callback they continue the same one, so on CPU with deterministic algorithms a
    resumed run ends with bitwise the same weights.

    What is saved is the state at the end of the last training step; the training stream is kept apart from
    everything that runs between steps:

    * validation (and the sanity check) runs with the generators of the training stream and they are put back
      afterwards (its DataLoaders draw a seed when they start iterating), so how often one validates does not
      change training, and a checkpoint written before validation resumes into the same stream as one written
      after it;
    * the validation DataLoaders get a private generator at ``on_train_start``: a fit resumed from a checkpoint
      written just before a validation starts their iterator once more (to skip that validation), between
      ``on_train_start`` and the first batch, where no callback hook runs;
    * the state is restored in ``on_train_start``, after Lightning has built the resumed iterators and run the
      sanity check.

    Under DDP every rank's state is gathered into the checkpoint (a collective in ``state_dict``, which Lightning
    calls on every rank) and each rank gets its own back; resuming on another number of ranks gives rank ``r``
    the state saved by rank ``r % saved_ranks`` (with a warning).

    Under DDP it also makes a SIGTERM stop every rank at the same batch boundary (see
    :class:`~lightning_margin.callbacks._sigterm.AgreedSigterm`): Lightning's own handling can leave the ranks in
    mismatched collectives or stopped at different batches.

    Randomness inside DataLoader workers is not a global state of this process: use
    :class:`~lightning_margin.data.sampler.ResumableDataLoader`, which seeds every sample.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.callbacks import ModelCheckpoint
        >>> trainer = Trainer(callbacks=[RNGStateCheckpoint(), ModelCheckpoint(save_last=True)])  # doctest: +SKIP
    """

    def __init__(self) -> None:
        super().__init__()
        self._trainer: pl.Trainer | None = None
        self._training_states: dict[str, Any] | None = None  # the stream the next training step continues
        self._loaded: list[dict[str, Any]] | None = None  # every rank's states from a checkpoint, until restored
        self._before_sanity_check: dict[str, Any] | None = None
        self._sigterm = AgreedSigterm()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        self._training_states = None
        self._sigterm = AgreedSigterm()

    # ---- restoring and keeping the training stream apart ------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sigterm.install(trainer)
        if self._loaded is not None:
            saved = len(self._loaded)
            if saved != trainer.world_size:
                rank_zero_warn(
                    f"RNGStateCheckpoint: the checkpoint holds the random states of {saved} rank(s), this run has "
                    f"{trainer.world_size}: rank r continues the stream of saved rank r % {saved}"
                )
            set_rng_states(self._loaded[trainer.global_rank % saved])
            self._loaded = None
        # Every DataLoader draws a worker seed from the global generator when it starts iterating, and a resumed
        # fit starts the validation iterator once more (to skip a validation that ran before the interruption)
        # between this hook and the first training batch, with no hook in between. A private generator for the
        # validation loaders (their samples are not random) keeps that draw out of the training stream.
        apply_to_collection(trainer.val_dataloaders, DataLoader, _give_private_generator)
        self._training_states = collect_rng_states()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._training_states = collect_rng_states()
        self._sigterm.agree(trainer)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._sigterm.agree(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sigterm.agree(trainer)

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sigterm.install(trainer)
        self._before_sanity_check = collect_rng_states()

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._before_sanity_check is not None:
            set_rng_states(self._before_sanity_check)
            self._before_sanity_check = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._training_states is not None:
            set_rng_states(self._training_states)

    # ---- checkpoints ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        states = self._training_states if self._training_states is not None else collect_rng_states()
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(gathered, states)
            return {"per_rank": gathered}
        return {"per_rank": [states]}

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Called before Lightning restores its loops from the same dictionary.
        finish_epoch_end_checkpoint(checkpoint)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Restored in on_train_start: Lightning creates the resumed iterators and runs the sanity check before it.
        self._loaded = list(state_dict["per_rank"])


def finish_epoch_end_checkpoint(checkpoint: dict[str, Any]) -> bool:
    """Record an epoch as finished in a checkpoint written by an ``on_train_epoch_end`` hook (``ModelCheckpoint``'s
    epoch-end save, a SIGTERM handled there); returns whether it did.

    Such a checkpoint says the epoch's batches are all processed but the epoch is not completed. Lightning (2.6)
    resumes it, when training is bounded by ``max_steps``, by running the epoch's end once more: its ``processed``
    counter then stays one ahead, and every later epoch sets its sampler to the wrong epoch (another order). Marking
    the epoch completed and the per-epoch batch counters reset, as at the start of the next epoch, resumes there.

    Example:
        >>> progress = {"ready": 1, "started": 1, "processed": 1, "completed": 0}
        >>> batches = {"ready": 32, "started": 32, "processed": 32, "completed": 32}
        >>> checkpoint = {"loops": {"fit_loop": {
        ...     "epoch_progress": {"total": dict(progress), "current": dict(progress)},
        ...     "epoch_loop.batch_progress": {"total": dict(batches), "current": dict(batches), "is_last_batch": True},
        ... }}}
        >>> finish_epoch_end_checkpoint(checkpoint)
        True
        >>> checkpoint["loops"]["fit_loop"]["epoch_progress"]["total"]["completed"]
        1
        >>> checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["ready"]
        0
    """
    loop = checkpoint.get("loops", {}).get("fit_loop")
    if not loop or "epoch_progress" not in loop:
        return False
    epochs = loop["epoch_progress"]["total"]
    batches = loop.get("epoch_loop.batch_progress", {}).get("total", {})
    inside_epoch_end = epochs["ready"] == epochs["started"] == epochs["processed"] == epochs["completed"] + 1
    batches_done = len(set(batches.values())) <= 1  # no batch in flight
    if not (inside_epoch_end and batches_done):
        return False
    for tracker in (loop["epoch_progress"]["total"], loop["epoch_progress"]["current"]):
        tracker["completed"] = tracker["processed"]
    for key in ("epoch_loop.batch_progress", "epoch_loop.scheduler_progress", "epoch_loop.val_loop.batch_progress"):
        if key in loop:
            _zero(loop[key]["current"])
    if "epoch_loop.batch_progress" in loop:
        loop["epoch_loop.batch_progress"]["is_last_batch"] = False
    optimizer = loop.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {})
    for tracker in optimizer.values():
        _zero(tracker["current"])
    return True


def _zero(tracker: dict[str, Any]) -> None:
    for name in tracker:
        tracker[name] = 0


def _give_private_generator(loader: DataLoader) -> None:
    if loader.generator is None:
        loader.generator = torch.Generator().manual_seed(0)
