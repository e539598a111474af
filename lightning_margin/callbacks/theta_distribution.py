"""θ distribution during training (ArcFace, Deng et al., 2019, Figure 7), recorded by a callback and logged."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure
from torch import Tensor, nn

from lightning_margin._validation import check_integer, check_range
from lightning_margin.callbacks.head_path import resolve_head
from lightning_margin.loggers import log_figure
from lightning_margin.plots import class_center_angles, plot_theta_histograms, rows_per_class

__all__ = ["ThetaDistribution"]

_STAGE_NAMES = {0.0: "start", 0.5: "middle", 1.0: "end"}


class ThetaDistribution(Callback):
    """Record the angle between each training embedding and its class centre at stages of training and draw it.

    The ArcFace paper's Figure 7: early in training the angles pile up near 90 degrees (random directions in a
    high-dimensional space), and a working margin loss moves them towards 0. A stage at fraction ``f`` of
    training is the window of ``num_batches`` consecutive optimizer steps starting at step
    ``round(f * (total - num_batches))``, where ``total`` is ``trainer.estimated_stepping_batches`` (from
    ``max_steps``, or ``max_epochs`` times the batches per epoch): ``0`` is the first ``num_batches`` steps, ``1``
    the last ones. The angle of each embedding of those steps to its class centre (``head.weight[label]``, the
    nearest sub-centre for sub-center heads) is kept, up to ``max_samples`` per stage. The centre is the weight
    the loss saw, from before that step's update (a copy of ``head.weight`` is held for the duration of each
    recorded step): early on a single update can turn a small-norm centre by tens of degrees.

    At the end of training the histograms (one curve per stage) are drawn with
    :func:`~lightning_margin.plots.plot_theta_histograms`, saved to ``save_path`` if given, and logged as an image
    under ``tag`` to every TensorBoard or wandb logger of the trainer; the mean angle of each stage is logged as
    ``<tag>/mean_<stage>``. :meth:`state_dict` keeps the recorded angles, so a resumed run draws the stages it
    recorded before the interruption. Under DDP each process records its own batches and rank 0 draws its own.

    It needs ``training_step`` to return a dict with ``"embeddings"`` and ``"labels"`` (as
    :class:`~lightning_margin.MarginModule` does), so no second forward pass is run.

    Args:
        stages: Fractions of training in [0, 1] (default start, middle, end).
        num_batches: Optimizer steps per stage.
        max_samples: Angles kept per stage at most.
        bins: Histogram bins over [0, 180] degrees.
        head_path: Dotted path from the LightningModule to the head.
        save_path: Also write the figure there as a PNG.
        tag: Name of the logged image.

    Example:
        >>> from lightning_margin.callbacks import ThetaDistribution  # doctest: +SKIP
        >>> trainer = pl.Trainer(max_steps=10_000, callbacks=[ThetaDistribution(num_batches=20)])  # doctest: +SKIP
    """

    def __init__(
        self,
        stages: Sequence[float] = (0.0, 0.5, 1.0),
        num_batches: int = 10,
        max_samples: int = 20_000,
        bins: int = 90,
        head_path: str = "head",
        save_path: str | os.PathLike[str] | None = None,
        tag: str = "train/theta_distribution",
    ) -> None:
        super().__init__()
        if isinstance(stages, (str, float, int)) or not stages:
            raise ValueError(f"`stages` must be a non-empty sequence of fractions in [0, 1], got {stages!r}")
        fractions = sorted({check_range("stages", stage, 0.0, 1.0) for stage in stages})
        if len(fractions) != len(stages):
            raise ValueError(f"`stages` must be distinct, got {list(stages)}")
        self.stages = fractions
        self.num_batches = check_integer("num_batches", num_batches)
        self.max_samples = check_integer("max_samples", max_samples)
        self.bins = check_integer("bins", bins)
        self.head_path = head_path
        self.save_path = save_path
        self.tag = tag
        self.angles: dict[str, Tensor] = {self.stage_name(stage): torch.empty(0) for stage in self.stages}
        self.windows: dict[str, tuple[int, int]] = {}
        self._step: int | None = None
        self._weight: Tensor | None = None

    @staticmethod
    def stage_name(fraction: float) -> str:
        """``"start"``, ``"middle"``, ``"end"`` for 0, 0.5, 1; a percentage such as ``"25%"`` otherwise."""
        return _STAGE_NAMES.get(fraction, f"{100 * fraction:g}%")

    @property
    def state_key(self) -> str:
        return self._generate_state_key(stages=self.stages, head_path=self.head_path, tag=self.tag)

    # ---- recording -------------------------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._head(pl_module)  # fail before the first step, not at the first stage, on a wrong head_path
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            rank_zero_warn(
                f"{type(self).__name__}: the number of training steps is unknown (no max_steps and an iterable of "
                "unknown length), so the stages cannot be placed; nothing will be recorded. Set max_steps."
            )
            self.windows = {}
            return
        total = int(total)
        width = min(self.num_batches, total)
        # Stage f covers [round(f * (total - width)), ... + width): the first, the middle, the last steps.
        self.windows = {}
        for fraction in self.stages:
            start = round(fraction * (total - width))
            self.windows[self.stage_name(fraction)] = (start, start + width)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        # global_step is the index of the optimizer step this batch contributes to (it moves after the step).
        self._step = trainer.global_step
        self._weight = None
        if self._recording_stages():
            self._weight = self._head(pl_module).weight.detach().clone()

    def _recording_stages(self) -> list[str]:
        step = self._step
        return [
            name
            for name, (start, stop) in self.windows.items()
            if step is not None and start <= step < stop and self.angles[name].numel() < self.max_samples
        ]

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stages = self._recording_stages()
        if not stages or self._weight is None:
            return
        if not isinstance(outputs, dict) or "embeddings" not in outputs or "labels" not in outputs:
            raise ValueError(
                f"{type(self).__name__} needs training_step to return a dict with 'embeddings' and 'labels' "
                f"(as MarginModule does); {type(pl_module).__name__}.training_step returned "
                f"{sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__}"
            )
        head = self._head(pl_module)
        weight, self._weight = self._weight, None
        angles = class_center_angles(outputs["embeddings"], outputs["labels"], weight, rows_per_class(head))
        angles = angles.float().cpu()
        for name in stages:
            room = self.max_samples - self.angles[name].numel()
            self.angles[name] = torch.cat([self.angles[name], angles[:room]])

    def _head(self, pl_module: pl.LightningModule) -> nn.Module:
        module = resolve_head(pl_module, self.head_path, type(self).__name__)
        if not isinstance(getattr(module, "weight", None), Tensor):
            raise ValueError(f"{type(self).__name__}: `{self.head_path}` has no `weight` tensor of class centres")
        return module

    # ---- drawing and logging ---------------------------------------------------------------------------------

    def plot(self, path: str | os.PathLike[str] | None = None) -> Figure:
        """The histograms of the stages recorded so far (empty stages are left out), saved to ``path`` if given."""
        recorded = {
            f"{name}, steps {self.windows[name][0]}–{self.windows[name][1] - 1}"
            if name in self.windows
            else name: angles
            for name, angles in self.angles.items()
            if angles.numel()
        }
        if not recorded:
            raise ValueError(f"{type(self).__name__} has recorded nothing yet")
        return plot_theta_histograms(recorded, path, bins=self.bins)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not any(angles.numel() for angles in self.angles.values()):
            return
        figure = self.plot(self.save_path)
        metrics = {
            f"{self.tag}/mean_{name}": float(angles.mean()) for name, angles in self.angles.items() if angles.numel()
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        log_figure(trainer.loggers, self.tag, figure, step=trainer.global_step)

    # ---- checkpointing ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"stages": list(self.stages), "angles": {name: angles.clone() for name, angles in self.angles.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if list(state_dict.get("stages", [])) != self.stages:
            raise ValueError(
                f"{type(self).__name__}: the checkpoint recorded stages {state_dict.get('stages')}, this callback "
                f"has {self.stages}"
            )
        self.angles = {name: torch.as_tensor(angles).float() for name, angles in state_dict["angles"].items()}
