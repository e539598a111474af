"""Numerical safety: stop (or skip) the training step in which the embeddings, the loss or a gradient is not finite."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_margin._validation import check_choice, check_integer
from lightning_margin.callbacks.head_path import resolve_head
from lightning_margin.callbacks.nonfinite_diagnostics import (
    NonFiniteError,
    NonFiniteReport,
    describe_head,
    embedding_statistics,
    margin_head,
    nonfinite_parameters,
    screen_nonfinite,
)

__all__ = ["ACTIONS", "NonFiniteGuard"]

ACTIONS = ("stop", "skip")


@dataclass
class _MicroBatch:
    """What the guard saw of one training batch (several per optimizer step with gradient accumulation)."""

    batch_idx: int
    embeddings: Tensor | None = None  # detached; the first non-finite ones if any, else the last seen
    labels: Tensor | None = None
    embeddings_nonfinite: bool = False
    losses: list[Tensor] = field(default_factory=list)  # detached losses passed to backward
    loss_flags: list[Tensor] = field(default_factory=list)  # 0-dim bool, not yet read (no sync)


class NonFiniteGuard(Callback):
    """Stops the run (or skips the optimizer step) in the training step where the embeddings, the loss or a
    gradient stops being finite, with a message naming the step, the head and the embeddings' norms and cosines.

    Without it a single NaN goes unnoticed into the weights and the optimizer's momentum, and every later step is
    NaN. What is checked, and where (everything before ``optimizer.step``, so nothing is trained on NaN):

    * **Embeddings**, as the LightningModule's ``forward`` returns them in a training step (MarginModule's
      contract: ``forward(images)`` is the embeddings). The heads reject non-finite embeddings with a
      ``ValueError`` that would end the run without context; the guard sees them first. The step then goes on
      with the non-finite entries replaced by zeros and the head's loss made NaN (so ``train/loss`` shows the
      fault), and the decision is taken at ``on_before_optimizer_step`` like the others, which keeps every DDP
      rank in the same collectives.
    * **The loss** passed to backward, in ``on_before_backward``. ``on_train_batch_end`` would be too late: it
      runs after ``optimizer.step``, when the NaN is already in the weights and the momentum.
    * **Gradients**, in ``on_before_optimizer_step`` (after Lightning has unscaled them under AMP), with one
      fused reduction; the names of the non-finite ones are only looked up once a fault is found.

    Under fp16 mixed precision with a ``GradScaler`` inf gradients are normal: the scaler skips that step and
    lowers the scale. The guard then checks only the embeddings and the loss (a non-finite loss is no scaling
    problem, and the scaler would lower the scale forever). bf16 and fp32 have no scaler: gradients are checked.

    On a fault:

    * ``action="stop"`` raises :class:`NonFiniteError` (a ``RuntimeError``) before the optimizer step: the weights
      and the optimizer state are those from before the step (the forward pass's buffers too, with
      ``restore_buffers``).
    * ``action="skip"`` sets every gradient of the optimizer to ``None``, so SGD and AdamW leave the parameters and
      their state (momentum, moments, step count) untouched; the step counter, the LR schedule and the data move
      on, as with a step the ``GradScaler`` skips. The skip is warned about with the same message, counted
      (:attr:`skipped_steps`, kept in checkpoints) and logged as ``train/skipped_steps`` every step. After
      ``max_skips`` skipped steps the next fault stops the run.

    Cost in the normal case: one reduction over the embeddings read by the host in the forward pass (the head
    reads one already), one fused reduction over the gradients and the losses read once per optimizer step, plus
    one all-reduce of a flag per step under DDP; with ``restore_buffers`` a copy of the module's buffers per step.
    Statistics (norms, cosines, parameter names) are computed only when a fault is found.

    Args:
        action: ``"stop"`` (raise) or ``"skip"`` (drop this step's update and go on).
        max_skips: With ``"skip"``: stop at the first fault after this many skipped steps (``None``: never).
        restore_buffers: Copy the module's buffers (BatchNorm running statistics, head statistics such as
            CurricularFace's ``t``) before every step and put them back on a fault: a forward pass on non-finite
            values leaves NaN in running statistics, which would make every later evaluation NaN.
        head_path: Dotted path from the LightningModule to the head, for the message; ``None``: no head.

    Example:
        >>> guard = NonFiniteGuard(action="skip", max_skips=10)
        >>> trainer = pl.Trainer(callbacks=[guard])  # doctest: +SKIP
        >>> guard.state_dict()  # what a checkpoint keeps
        {'skipped_steps': 0}
    """

    def __init__(
        self,
        action: Literal["stop", "skip"] = "stop",
        max_skips: int | None = None,
        restore_buffers: bool = True,
        head_path: str | None = "head",
    ) -> None:
        super().__init__()
        self.action = check_choice("action", action, ACTIONS)
        if max_skips is not None:
            if action != "skip":
                raise ValueError(f"`max_skips` only applies to action='skip', got action={action!r}")
            max_skips = check_integer("max_skips", max_skips, minimum=0)
        self.max_skips = max_skips
        self.restore_buffers = bool(restore_buffers)
        self.head_path = head_path
        self.skipped_steps = 0
        self._handles: list[RemovableHandle] = []
        self._head: nn.Module | None = None
        self._buffers: list[Tensor] = []
        self._buffer_copies: list[Tensor] = []
        self._window: list[_MicroBatch] = []  # the batches of the coming optimizer step
        self._current: _MicroBatch | None = None  # set only inside a training batch

    # ---- hooks into the module ------------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        self._head = None if self.head_path is None else resolve_head(pl_module, self.head_path, type(self).__name__)
        self._handles.append(pl_module.register_forward_hook(self._on_module_forward))
        if self._head is not None:
            self._handles.append(self._head.register_forward_hook(self._on_head_forward, with_kwargs=True))
        # Read once: buffers are updated in place (BatchNorm, the heads' statistics).
        self._buffers = list(pl_module.buffers()) if self.restore_buffers else []
        self._buffer_copies = [torch.empty_like(buffer) for buffer in self._buffers]
        self._window, self._current = [], None

    def _on_module_forward(self, module: nn.Module, args: Any, output: Any) -> Tensor | None:
        record = self._current
        if record is None or not isinstance(output, Tensor) or output.ndim != 2 or not output.is_floating_point():
            return None  # not a training batch's embeddings (validation, or DDP's call around training_step)
        finite = torch.isfinite(output)
        if bool(finite.all()):
            if not record.embeddings_nonfinite:
                record.embeddings, record.labels = output.detach(), None
            return None
        if not record.embeddings_nonfinite:
            record.embeddings, record.labels, record.embeddings_nonfinite = output.detach(), None, True
        # A finite stand-in, so the head does not raise and every rank still runs backward (DDP's all-reduce); the
        # head's loss is made NaN below and this step's update is dropped or the run stopped in any case.
        return torch.where(finite, output, torch.zeros((), dtype=output.dtype, device=output.device))

    def _on_head_forward(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Tensor | None:
        record = self._current
        if record is None:
            return None
        labels = kwargs.get("labels", args[1] if len(args) > 1 else None)
        if record.labels is None and isinstance(labels, Tensor):
            record.labels = labels.detach()
        if record.embeddings_nonfinite and isinstance(output, Tensor) and output.is_floating_point():
            return output * float("nan")  # keeps the graph: the loss of these embeddings is not a number
        return None

    # ---- the training step ----------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        if not self._window and self._buffers:
            torch._foreach_copy_(self._buffer_copies, self._buffers)  # one fused copy, not one kernel per buffer
        self._current = _MicroBatch(batch_idx)
        self._window.append(self._current)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._current = None

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        record = self._current  # Lightning calls backward between on_train_batch_start and on_train_batch_end
        if record is None:
            return
        loss = loss.detach()
        record.losses.append(loss)
        record.loss_flags.append(~torch.isfinite(loss).all())  # read at the optimizer step: one sync for all

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        window, self._window = self._window, []
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        check_gradients = _grad_scaler(trainer) is None
        grads = [p.grad for p in parameters if p.grad is not None] if check_gradients else []
        flags = [flag for record in window for flag in record.loss_flags]
        if grads:
            flags.append(screen_nonfinite(grads))
        local = any(record.embeddings_nonfinite for record in window)
        bad_parameters: list[str] | None = None
        if not local and flags:
            device = flags[0].device
            if bool(torch.stack([flag.to(device) for flag in flags]).any()):  # the step's one host sync
                # Confirm: the gradient screen also fires on huge finite values.
                bad_parameters = self._nonfinite_parameters(pl_module, parameters) if grads else []
                local = bool(bad_parameters) or any(bool(flag) for record in window for flag in record.loss_flags)
        fault = trainer.strategy.reduce_boolean_decision(local, all=False) if trainer.world_size > 1 else local
        if fault:
            report = self._report(trainer, pl_module, window, parameters, check_gradients, bad_parameters, local)
            self._handle_fault(report, parameters, local)
        if self.action == "skip":
            pl_module.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)

    def _handle_fault(self, report: NonFiniteReport, parameters: Sequence[nn.Parameter], local: bool) -> None:
        """Restore the BatchNorm statistics, then stop, or skip the step by dropping its gradients."""
        for live, saved in zip(self._buffers, self._buffer_copies, strict=True):
            live.copy_(saved)
        if self.action == "stop":
            raise NonFiniteError(report, "; stopping (NonFiniteGuard(action='skip') would skip such steps)")
        if self.max_skips is not None and self.skipped_steps >= self.max_skips:
            suffix = f"; stopping: {self.skipped_steps} steps already skipped (max_skips={self.max_skips})"
            raise NonFiniteError(report, suffix)
        for parameter in parameters:
            parameter.grad = None  # SGD / AdamW leave parameters without a gradient and their state untouched
        self.skipped_steps += 1
        if local:  # the ranks that only followed another rank's decision stay quiet
            warnings.warn(f"{report}; step skipped ({self.skipped_steps} so far)", RuntimeWarning, stacklevel=2)

    def _report(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        window: Sequence[_MicroBatch],
        parameters: Sequence[nn.Parameter],
        check_gradients: bool,
        bad_parameters: list[str] | None,
        local: bool,
    ) -> NonFiniteReport:
        """The :class:`NonFiniteReport` of an optimizer step over the batches ``window`` (computed on a fault)."""
        bad_losses = [
            loss for record in window for loss, bad in zip(record.losses, record.loss_flags, strict=True) if bad
        ]
        # The guard itself makes the loss of non-finite embeddings NaN: that is no separate fault of the loss.
        bad_loss_elsewhere = any(
            bool(bad) for record in window if not record.embeddings_nonfinite for bad in record.loss_flags
        )
        all_losses = [loss for record in window for loss in record.losses]
        loss = bad_losses[0] if bad_losses else (all_losses[-1] if all_losses else None)
        embeddings_nonfinite = any(record.embeddings_nonfinite for record in window)
        if embeddings_nonfinite:
            loss = None  # the NaN the guard made of it: no information
        if loss is not None:
            # Undo Lightning's division by the accumulation count and the GradScaler's factor (display only).
            scaler = _grad_scaler(trainer)
            scale = float(scaler.get_scale()) if scaler is not None else 1.0
            loss = float(loss.float().mean()) * trainer.accumulate_grad_batches / scale
        # After non-finite embeddings every gradient is NaN by the guard's own doing: nothing to learn from them.
        if embeddings_nonfinite or not check_gradients:
            bad_parameters = []
        elif bad_parameters is None:  # only another rank's fault: still tell what this rank's gradients hold
            bad_parameters = self._nonfinite_parameters(pl_module, parameters)
        kinds = []
        if embeddings_nonfinite:
            kinds.append("embeddings")
        if bad_loss_elsewhere:
            kinds.append("loss")
        if bad_parameters:
            kinds.append("gradients")
        if not local:
            kinds = []
        faulty = [record for record in window if record.embeddings_nonfinite] or window[-1:]
        shown = next((record for record in faulty if record.embeddings is not None), None)
        statistics = None
        if shown is not None:
            head = margin_head(self._head)
            statistics = embedding_statistics(
                shown.embeddings,
                getattr(head, "weight", None),
                shown.labels,
                rows_per_class=int(getattr(head, "rows_per_class", 1)),
                class_offset=int(getattr(self._head, "class_start", 0)),
            )
        return NonFiniteReport(
            kinds=tuple(kinds),
            global_step=trainer.global_step,
            epoch=trainer.current_epoch,
            batch_indices=tuple(record.batch_idx for record in window),
            head=describe_head(self._head),
            loss=loss,
            embeddings=statistics,
            nonfinite_parameters=tuple(bad_parameters),
            checked_parameters=sum(p.grad is not None for p in parameters),
            gradients_checked=check_gradients,
            rank=trainer.global_rank if trainer.world_size > 1 else None,
        )

    @staticmethod
    def _nonfinite_parameters(pl_module: pl.LightningModule, parameters: Sequence[nn.Parameter]) -> list[str]:
        names = {id(p): name for name, p in pl_module.named_parameters()}
        return nonfinite_parameters((names.get(id(p), f"<parameter {i}>"), p) for i, p in enumerate(parameters))

    # ---- clean-up and checkpoints ---------------------------------------------------------------------------

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._window, self._current = [], None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()
        self._buffers, self._buffer_copies = [], []

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))


def _grad_scaler(trainer: pl.Trainer) -> torch.amp.GradScaler | None:
    """The GradScaler of fp16 AMP (Lightning's ``16-mixed``), whose business inf gradients are; else ``None``."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None
