"""The ROC curve of every verification set, drawn at the end of each validation and test pass."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

__all__ = ["ROCFigure"]


class ROCFigure(Callback):
    """Logs a ROC-curve figure of each verification set as ``val/<set>/roc`` (``test/<set>/roc`` when testing).

    It reads the module's per-set verification metrics (``val_metrics`` and ``val_set_names``, as
    :class:`~lightning_margin.MarginModule` holds them) at the end of the pass: Lightning runs the callbacks'
    ``on_validation_epoch_end`` before the module's, which computes the scalar metrics and resets them. Figures go
    to the loggers that take images (TensorBoard, wandb); the sanity check draws none. Under DDP every process
    gathers the pairs (as the metrics' ``compute`` does).

    Example:
        >>> from lightning_margin.callbacks import ROCFigure
        >>> callback = ROCFigure()
    """

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._draw(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._draw(trainer, pl_module, "test")

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prefix: str) -> None:
        if not trainer.loggers:
            return
        from lightning_margin.loggers import log_figure
        from lightning_margin.plots.roc import plot_roc_curves

        names = getattr(pl_module, "val_set_names", [])
        for name, metric in zip(names, getattr(pl_module, "val_metrics", []), strict=False):
            if not metric.update_called:
                continue
            try:
                fpr, tpr, _ = metric.roc_curve()
            except ValueError:  # no pairs, or one class only (a partial pass): the module warns about it
                continue
            title = f"{name}, epoch {trainer.current_epoch}"
            figure = plot_roc_curves({name: (fpr.cpu(), tpr.cpu())}, title=title)
            log_figure(trainer.loggers, f"{prefix}/{name}/roc", figure, step=trainer.global_step)
