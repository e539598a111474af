"""A SIGTERM under DDP stops every rank at the same batch boundary.

Lightning (2.6) handles SIGTERM with a ``dist.broadcast`` inside the signal handler and checks each rank's own flag
at the end of each batch and epoch. A handler that runs a collective pairs up with whatever collective the other
rank is in, and a rank signalled twice (by the scheduler and by rank 0, which forwards the signal to the ranks it
launched) broadcasts twice: the ranks then wait on mismatched collectives for ever, or stop at different batches
and save a checkpoint that no rank can resume exactly. Here the handler only records the signal; the ranks agree
on it by an all-reduce at the boundaries where Lightning looks at its flag, so all of them raise at the same one.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import lightning.pytorch as pl

__all__ = ["AgreedSigterm"]


class AgreedSigterm:
    """Records SIGTERM on this rank and makes ``trainer.received_sigterm`` the same on every rank.

    :meth:`install` once the trainer has registered its own handlers (from ``on_sanity_check_start`` or
    ``on_train_start``); :meth:`agree` at each boundary where Lightning checks the flag, on every rank in the same
    order (``on_train_batch_end``, ``on_validation_batch_end``, ``on_train_epoch_end``). A signal that arrives
    after an agreement is acted on at the next one. With one process it does nothing: Lightning's own handler is
    exact there.
    """

    def __init__(self) -> None:
        self.received = False
        self.installed = False

    def install(self, trainer: pl.Trainer) -> None:
        if self.installed or trainer.world_size == 1 or threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._record)
        self.installed = True  # Lightning's teardown puts the handlers from before the fit back

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received = True

    def agree(self, trainer: pl.Trainer) -> None:
        if not self.installed:
            return
        if trainer.strategy.reduce_boolean_decision(self.received, all=False):
            # Lightning's own flag, read by its loops right after these hooks; it has no public setter.
            trainer._signal_connector.received_sigterm = True
