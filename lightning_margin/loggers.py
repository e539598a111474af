"""Sending matplotlib figures to whichever experiment loggers are in use (TensorBoard, wandb)."""

from __future__ import annotations

from collections.abc import Iterable

from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure

__all__ = ["log_figure"]


def log_figure(loggers: Iterable[Logger], tag: str, figure: Figure, step: int | None = None) -> int:
    """Log ``figure`` under ``tag`` to every logger that takes images; returns how many took it.

    TensorBoard gets ``add_figure``, wandb a ``wandb.Image``; other loggers (CSV, ...) are skipped. The figure
    is closed afterwards.
    """
    import matplotlib.pyplot as plt

    logged = 0
    try:
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(tag, figure, global_step=step, close=False)
                logged += 1
            elif isinstance(logger, WandbLogger):
                import wandb

                logger.experiment.log({tag: wandb.Image(figure), "trainer/global_step": step})
                logged += 1
    finally:
        plt.close(figure)
    return logged
