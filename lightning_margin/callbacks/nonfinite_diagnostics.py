"""What went wrong when a training step is not finite: the screens, statistics and report of a non-finite step.

Pure functions and plain data, without Lightning: :class:`~lightning_margin.callbacks.NonFiniteGuard` calls them when
a step fails, and they serve any training loop that wants the same diagnosis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "EmbeddingStatistics",
    "NonFiniteError",
    "NonFiniteReport",
    "describe_head",
    "embedding_statistics",
    "margin_head",
    "nonfinite_parameters",
    "screen_nonfinite",
]

# How many parameter names a report lists; the count is always given.
_NAMES_SHOWN = 5


def screen_nonfinite(tensors: Iterable[Tensor]) -> Tensor:
    """A 0-dim bool tensor that is True if ``tensors`` may hold a NaN or inf, without a host synchronisation.

    The 2-norm of all values (:func:`torch.nn.utils.get_total_norm`: one fused kernel per device and dtype on GPU,
    as gradient clipping uses) is NaN or inf whenever a value is; it also overflows for finite values beyond
    about 1e19, so a True is only a reason to look closer (:func:`nonfinite_parameters`), never a verdict.
    """
    parts = [t.coalesce().values() if t.is_sparse else t for t in tensors]
    parts = [t for t in parts if t.numel()]
    if not parts:
        return torch.tensor(False)
    return ~torch.isfinite(torch.nn.utils.get_total_norm(parts, norm_type=2.0))


def nonfinite_parameters(named_parameters: Iterable[tuple[str, nn.Parameter]]) -> list[str]:
    """Names of the parameters whose ``.grad`` holds a NaN or inf, in the given order (parameters without grad skipped).

    Example:
        >>> weight = nn.Parameter(torch.zeros(2))
        >>> weight.grad = torch.tensor([0.0, float("inf")])
        >>> nonfinite_parameters([("weight", weight), ("bias", nn.Parameter(torch.zeros(1)))])
        ['weight']
    """
    names = []
    for name, parameter in named_parameters:
        grad = parameter.grad
        if grad is None:
            continue
        values = grad.coalesce().values() if grad.is_sparse else grad
        if not bool(torch.isfinite(values).all()):
            names.append(name)
    return names


@dataclass(frozen=True)
class EmbeddingStatistics:
    """What a batch of embeddings looked like: non-finite counts, L2 norms and cosines to the class centres.

    Norms and cosines are over the rows without NaN or inf (``None`` when no row is finite, or when no class
    centres / labels were given). ``true_cosine_*`` is each row's cosine to its own class (the nearest of its
    sub-centres).
    """

    rows: int
    nonfinite_rows: int
    nan_values: int
    inf_values: int
    norm_min: float | None = None
    norm_max: float | None = None
    cosine_min: float | None = None
    cosine_max: float | None = None
    true_cosine_min: float | None = None
    true_cosine_max: float | None = None

    def __str__(self) -> str:
        if self.nonfinite_rows:
            text = (
                f"{self.nonfinite_rows} of {self.rows} rows non-finite ({self.nan_values} NaN and {self.inf_values} "
                "inf values)"
            )
        else:
            text = f"all {self.rows} rows finite"
        if self.norm_min is not None:
            text += f"; L2 norm of the finite rows min {self.norm_min:.6g} max {self.norm_max:.6g}"
        if self.cosine_min is not None:
            text += f"; cosine to the class centres min {self.cosine_min:.6g} max {self.cosine_max:.6g}"
        if self.true_cosine_min is not None:
            text += f", to the true class min {self.true_cosine_min:.6g} max {self.true_cosine_max:.6g}"
        return text


def embedding_statistics(
    embeddings: Tensor,
    class_centres: Tensor | None = None,
    labels: Tensor | None = None,
    rows_per_class: int = 1,
    class_offset: int = 0,
) -> EmbeddingStatistics:
    """Non-finite counts, min/max L2 norm and min/max cosine to the class centres of ``[B, D]`` embeddings.

    Args:
        embeddings: ``[B, D]``, any floating dtype (computed in float32, or float64 for float64 inputs).
        class_centres: A head's ``[num_classes * rows_per_class, D]`` weight (class-major rows), or ``None``.
        labels: ``[B]`` class ids for the cosine to the true class, or ``None``.
        rows_per_class: Sub-centres per class.
        class_offset: The class id of the first row of ``class_centres`` (a shard of a sharded head); labels
            outside the rows held are left out of the true-class cosine.

    Example:
        >>> embeddings = torch.tensor([[3.0, 4.0], [float("inf"), 0.0]])
        >>> stats = embedding_statistics(embeddings, class_centres=torch.eye(2), labels=torch.tensor([1, 0]))
        >>> stats.nonfinite_rows, stats.norm_max
        (1, 5.0)
        >>> print(stats)  # doctest: +NORMALIZE_WHITESPACE
        1 of 2 rows non-finite (0 NaN and 1 inf values); L2 norm of the finite rows min 5 max 5; cosine to the class
        centres min 0.6 max 0.8, to the true class min 0.8 max 0.8
    """
    with torch.no_grad():
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        x = embeddings.detach().to(dtype)
        finite_rows = torch.isfinite(x).all(dim=1)
        stats: dict[str, Any] = {
            "rows": x.shape[0],
            "nonfinite_rows": int((~finite_rows).sum()),
            "nan_values": int(torch.isnan(x).sum()),
            "inf_values": int(torch.isinf(x).sum()),
        }
        x = x[finite_rows]
        if x.shape[0]:
            norms = torch.linalg.vector_norm(x, dim=1)
            stats.update(norm_min=float(norms.min()), norm_max=float(norms.max()))
            if class_centres is not None and class_centres.shape[0]:
                centres = class_centres.detach().to(device=x.device, dtype=dtype)
                cosine = F.normalize(x, dim=1) @ F.normalize(centres, dim=1).T  # [B', C * K]
                stats.update(cosine_min=float(cosine.min()), cosine_max=float(cosine.max()))
                if labels is not None:
                    local = labels.detach().to(x.device)[finite_rows] - class_offset
                    held = (local >= 0) & (local < centres.shape[0] // rows_per_class)
                    if bool(held.any()):
                        per_class = cosine[held].view(int(held.sum()), -1, rows_per_class)
                        true = per_class[torch.arange(per_class.shape[0], device=x.device), local[held]].amax(dim=1)
                        stats.update(true_cosine_min=float(true.min()), true_cosine_max=float(true.max()))
    return EmbeddingStatistics(**stats)


def margin_head(head: nn.Module | None) -> nn.Module | None:
    """The module holding the class centres: the head itself, or the head a wrapper (ShardedMarginHead) holds."""
    if head is None or isinstance(getattr(head, "weight", None), Tensor):
        return head
    inner = getattr(head, "head", None)
    return inner if isinstance(getattr(inner, "weight", None), Tensor) else None


def describe_head(head: nn.Module | None) -> str:
    """The head's registry name, class and hyperparameters, e.g. ``arcface ArcFace(embedding_size=512, ...)``.

    A wrapper such as :class:`~lightning_margin.parallel.ShardedMarginHead` is described with the head it holds.

    Example:
        >>> from lightning_margin.heads import create_head
        >>> describe_head(create_head("cosface", embedding_size=8, num_classes=3, margin=0.35))
        'cosface CosFace(embedding_size=8, num_classes=3, scale=64.0, margin=0.35)'
    """
    if head is None:
        return "(no head)"
    text = f"{type(head).__name__}({head.extra_repr()})"
    name = getattr(head, "head_name", None)
    if name:
        text = f"{name} {text}"
    inner = margin_head(head)
    if inner is not None and inner is not head:
        text = f"{describe_head(inner)} in {text}"
    return text


@dataclass(frozen=True)
class NonFiniteReport:
    """Where a non-finite value appeared and what the step looked like: the content of the guard's message.

    ``kinds`` lists what was not finite on this process (``"embeddings"``, ``"loss"``, ``"gradients"``); it is
    empty when only another DDP rank found something (every rank then acts, so the replicas stay identical).
    """

    kinds: tuple[str, ...]
    global_step: int
    epoch: int
    batch_indices: tuple[int, ...]
    head: str
    loss: float | None = None
    embeddings: EmbeddingStatistics | None = None
    nonfinite_parameters: tuple[str, ...] = ()
    checked_parameters: int = 0
    gradients_checked: bool = True
    rank: int | None = None

    def __str__(self) -> str:
        where = f"rank {self.rank}: " if self.rank is not None else ""
        batches = ", ".join(map(str, self.batch_indices)) or "?"
        plural = "es" if len(self.batch_indices) > 1 else ""
        what = " and ".join(self.kinds) if self.kinds else "values on another rank"
        parts = [
            f"{where}non-finite {what} at global step {self.global_step} (epoch {self.epoch}, batch{plural} "
            f"{batches}); head: {self.head}"
        ]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.6g}")
        if self.embeddings is not None:
            parts.append(f"embeddings: {self.embeddings}")
        if self.nonfinite_parameters:
            shown = ", ".join(self.nonfinite_parameters[:_NAMES_SHOWN])
            more = ", ..." if len(self.nonfinite_parameters) > _NAMES_SHOWN else ""
            parts.append(
                f"non-finite gradients in {len(self.nonfinite_parameters)} of {self.checked_parameters} "
                f"parameters ({shown}{more})"
            )
        elif not self.gradients_checked:
            parts.append("gradients not checked (fp16 GradScaler: inf gradients are its business)")
        return "; ".join(parts)


class NonFiniteError(RuntimeError):
    """Raised by :class:`NonFiniteGuard` to stop a run; ``report`` holds the details as a :class:`NonFiniteReport`."""

    def __init__(self, report: NonFiniteReport, suffix: str = "") -> None:
        super().__init__(f"{report}{suffix}")
        self.report, self.suffix = report, suffix

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle their message only; keep the report (multiprocessing launchers send errors back).
        return type(self), (self.report, self.suffix)


# ---- the callback ---------------------------------------------------------------------------------------------
