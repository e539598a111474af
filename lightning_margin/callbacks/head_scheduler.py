"""HeadScheduler: a warm-up schedule for any numeric attribute of the head (margin, scale, m2, ...)."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
from torch import nn

from lightning_margin._validation import check_choice, check_integer
from lightning_margin.callbacks.hyperparameter_schedule import HeadHyperparameterSchedule
from lightning_margin.functional.schedules import SCHEDULES, warmup_value

__all__ = ["HeadScheduler"]


class HeadScheduler(HeadHyperparameterSchedule):
    """Moves a head hyperparameter from ``start`` to ``end`` over ``warmup_steps`` optimizer steps, then holds it.

    Margin losses trained from scratch on small data often collapse with the full margin from step 0; warming
    the margin up (or the scale) is the usual cure. ``start=None`` takes the head's value when fitting starts;
    that value is saved in the checkpoint, so a resumed run keeps the original ramp. (It was called
    ``MarginScheduler``: checkpoints that saved its state under that name resume too.)

    Args:
        attribute: The head attribute (``margin``, ``scale``, ``m2``, ``m3``, ...).
        end: The final value.
        warmup_steps: Steps to reach ``end`` (step ``global_step`` gets ``warmup_value(global_step, ...)``).
        start: The value at step 0; ``None``: the head's value at fit start.
        schedule: ``constant`` (``end`` from step 0), ``linear`` or ``cosine``.
        head_path: Dotted path from the LightningModule to the head.

    Example:
        >>> from lightning_margin.callbacks import HeadScheduler
        >>> HeadScheduler("margin", start=0.0, end=0.5, warmup_steps=1000).value_at(500)
        0.25
    """

    def __init__(
        self,
        attribute: str = "margin",
        end: float = 0.5,
        warmup_steps: int = 1000,
        start: float | None = None,
        schedule: Literal["constant", "linear", "cosine"] = "linear",
        head_path: str = "head",
    ) -> None:
        super().__init__(attribute, head_path)
        self.end = float(end)
        self.warmup_steps = check_integer("warmup_steps", warmup_steps, minimum=0)
        self.start = None if start is None else float(start)
        self.schedule = check_choice("schedule", schedule, SCHEDULES)

    def _on_schedule_start(self, head: nn.Module, current: float) -> None:
        if self.start is None:
            self.start = float(current)

    def value_at(self, step: int) -> float:
        start = self.end if self.start is None else self.start
        return warmup_value(step, start, self.end, self.warmup_steps, self.schedule)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "start": self.start}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.start = state_dict.get("start", self.start)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Callback states are keyed by class name: a checkpoint from before the rename holds this schedule's state
        # (the ramp's start value) under the old one. Lightning restores state_dict() after this hook, by key.
        states = checkpoint.get("callbacks") or {}
        old_key = self.state_key.replace(type(self).__qualname__, "MarginScheduler", 1)
        if self.state_key not in states and old_key in states:
            self.load_state_dict(states[old_key])
