"""Every value of every validation metric a fit logged, with its step and epoch: what the end-of-fit summary reads."""

from __future__ import annotations

from typing import Any, NamedTuple

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

__all__ = ["MetricHistory", "MetricRecord"]


class MetricRecord(NamedTuple):
    """One logged value of a metric: the optimizer step and epoch it was logged at, and the value."""

    step: int
    epoch: int
    value: float


class MetricHistory(Callback):
    """Records each validation run's logged metrics (``val/<set>/accuracy``, ...) as :class:`MetricRecord` lists.

    Lightning keeps only the latest value of a metric (``trainer.callback_metrics``); the end-of-fit summary
    (:func:`~lightning_margin.fit_summary.fit_summary`) needs the best one too, and the step it came from. A metric
    counts as logged by a validation run when its entry in ``callback_metrics`` was replaced during the run: a set
    that logged nothing this time (a partial pass with too few pairs) keeps last run's entry, which is not recorded
    again. The sanity check and ``validate``/``test`` runs are not recorded. The history is kept in checkpoints, so a
    resumed fit's summary covers the whole run. ``lightning-margin fit`` adds this callback when the config has none.

    Attributes:
        history: ``{metric name: [MetricRecord, ...]}`` in the order the values were logged.

    Example:
        >>> recorder = MetricHistory()
        >>> recorder.load_state_dict({"history": {"val/lfw/accuracy": [[100, 0, 0.91], [200, 1, 0.93]]}})
        >>> recorder.history["val/lfw/accuracy"][-1]
        MetricRecord(step=200, epoch=1, value=0.93)
    """

    def __init__(self) -> None:
        self.history: dict[str, list[MetricRecord]] = {}
        self._before: dict[str, Any] = {}

    def _recording(self, trainer: pl.Trainer) -> bool:
        return trainer.state.fn == "fit" and not trainer.sanity_checking

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._recording(trainer):
            self._before = dict(trainer.callback_metrics)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._recording(trainer):
            return
        # Lightning gives every value logged in this run a new tensor; entries from earlier runs stay the same objects.
        for name, value in trainer.callback_metrics.items():
            if value is self._before.get(name):
                continue
            record = MetricRecord(trainer.global_step, trainer.current_epoch, float(value))
            self.history.setdefault(name, []).append(record)
        self._before = {}

    def state_dict(self) -> dict[str, Any]:
        # Plain lists of numbers: checkpoints load with `weights_only=True`.
        return {"history": {name: [list(record) for record in records] for name, records in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {
            name: [MetricRecord(int(step), int(epoch), float(value)) for step, epoch, value in records]
            for name, records in state_dict.get("history", {}).items()
        }
