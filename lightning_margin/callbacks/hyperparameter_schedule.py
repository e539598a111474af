"""The base of the callbacks that move a head hyperparameter (lambda, margin, scale) along a schedule."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import nn

from lightning_margin.callbacks.head_path import resolve_head

__all__ = ["HeadHyperparameterSchedule"]


class HeadHyperparameterSchedule(Callback, ABC):
    """Sets ``<head>.<attribute>`` to :meth:`value_at(global_step) <value_at>` before every training step.

    The value is a pure function of ``trainer.global_step`` (optimizer steps taken so far: 0 before the first
    one), and Lightning restores ``global_step`` on resume, so a resumed run continues with exactly the values
    of an uninterrupted one. Whatever the schedule needs beyond the step (e.g. a start value read from the head)
    is kept by :meth:`state_dict`. Each change is logged as ``train/<attribute>``.

    Args:
        attribute: Name of a numeric attribute of the head (``lambda_``, ``margin``, ``scale``, ``m2``, ...).
        head_path: Dotted path from the LightningModule to the head (``"head"`` for
            :class:`~lightning_margin.MarginModule`).
    """

    def __init__(self, attribute: str, head_path: str = "head") -> None:
        super().__init__()
        if not attribute.isidentifier():
            raise ValueError(f"`attribute` must be an attribute name such as 'margin', got {attribute!r}")
        self.attribute = attribute
        self.head_path = head_path
        self.last_value: float | None = None
        self.last_step: int | None = None

    @property
    def state_key(self) -> str:
        # Several schedules (say margin and scale) may run in one trainer: each needs its own checkpoint entry.
        return self._generate_state_key(attribute=self.attribute, head_path=self.head_path)

    @abstractmethod
    def value_at(self, step: int) -> float:
        """The hyperparameter's value for the training step that follows ``step`` optimizer steps."""

    def head(self, pl_module: pl.LightningModule) -> nn.Module:
        """The module at ``head_path``; ``ValueError`` if there is none."""
        return resolve_head(pl_module, self.head_path, type(self).__name__)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        head = self.head(pl_module)
        current = getattr(head, self.attribute, None)
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            numeric = sorted(
                name
                for name, value in vars(head).items()
                if isinstance(value, (int, float)) and not isinstance(value, bool) and not name.startswith("_")
            )
            raise ValueError(
                f"{type(self).__name__}: {type(head).__name__} has no numeric attribute {self.attribute!r}; "
                f"its numeric attributes are: {', '.join(numeric)}"
            )
        self._on_schedule_start(head, current)
        self._apply(trainer, pl_module, log=False)

    def _on_schedule_start(self, head: nn.Module, current: float) -> None:
        """Hook for schedules that need the head's value before the first step."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        self._apply(trainer, pl_module, log=True)

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule, log: bool) -> None:
        head = self.head(pl_module)
        value = self.value_at(trainer.global_step)
        if isinstance(getattr(head, self.attribute), int):
            value = round(value)  # integer hyperparameters (SphereFace's m) stay integers
        setattr(head, self.attribute, value)
        self.last_value, self.last_step = value, trainer.global_step
        if log:
            pl_module.log(f"train/{self.attribute}", float(value), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return {"attribute": self.attribute, "last_value": self.last_value, "last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_value = state_dict.get("last_value")
        self.last_step = state_dict.get("last_step")
