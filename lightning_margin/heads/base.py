"""The base class of every margin head: one weight matrix, input checks, fp32 maths, cross-entropy."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_margin._validation import check_integer
from lightning_margin.functional import cosine_logits, replace_target_logits, target_cosine

__all__ = ["CosineMarginHead", "MarginHead"]


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32 for half-precision inputs, float64 stays float64 (gradcheck)."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


class _RecordsInitArguments:
    """Keeps the constructor's arguments on the instance, bound before ``__init__`` runs (see ``MarginHead.hparams``).

    ``__new__`` lives on this base, not on ``MarginHead``, so that ``inspect.signature`` of a head class still finds
    the head's ``__init__`` (it prefers a ``__new__`` met first in the MRO).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(instance, *args, **kwargs)
        except TypeError:  # copy and pickle call __new__ without arguments, then restore __dict__ themselves
            return instance
        bound.apply_defaults()
        arguments: dict[str, Any] = {}
        for name, parameter in list(bound.signature.parameters.items())[1:]:
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(bound.arguments.get(name, {}))
            elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
                arguments[name] = bound.arguments[name]
        object.__setattr__(instance, "_init_arguments", arguments)  # before nn.Module.__init__: a plain attribute
        return instance


class MarginHead(_RecordsInitArguments, nn.Module, ABC):
    """A classifier over ``num_classes`` identities whose loss is softmax cross-entropy on margin-penalised logits.

    Subclasses implement :meth:`_logits`; this class owns ``weight`` (``[num_classes * rows_per_class,
    embedding_size]``, :class:`torch.nn.Linear`'s layout), checks inputs, and runs the maths in float32 (float64
    if the inputs or weights are float64) with autocast disabled, whatever precision the backbone runs in:
    margins are differences of cosines near 1, which bf16/fp16 cannot resolve.

    Args:
        embedding_size: Width ``D`` of the embeddings.
        num_classes: Number of identities ``C``.
        rows_per_class: Weight rows per class (sub-centres); 1 for every head but :class:`SubCenterArcFace`.
    """

    def __init__(self, embedding_size: int, num_classes: int, *, rows_per_class: int = 1) -> None:
        super().__init__()
        self.embedding_size = check_integer("embedding_size", embedding_size)
        self.num_classes = check_integer("num_classes", num_classes)
        self.rows_per_class = check_integer("rows_per_class", rows_per_class)
        self.weight = nn.Parameter(torch.empty(self.num_classes * self.rows_per_class, self.embedding_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise ``weight``: N(0, 0.01) as insightface does; only its row directions matter to cosine heads."""
        nn.init.normal_(self.weight, std=0.01)

    # ---- public API -------------------------------------------------------------------------------------------

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy of the margin logits (plus the head's own regulariser, if its paper has one)."""
        if labels is None:
            raise ValueError(f"{type(self).__name__}.forward needs labels; use .logits(embeddings) for inference")
        self._check_inputs(embeddings, labels)
        with self._full_precision(embeddings):
            x = embeddings.to(_compute_dtype(embeddings, self.weight))
            if self.training:
                with torch.no_grad():
                    self._update_statistics(x, labels)
            loss = F.cross_entropy(self._logits(x, labels), labels)
            return loss + self._regularizer(x)

    def logits(self, embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        """``[B, num_classes]`` logits: with labels, exactly what the loss's softmax sees; without, no margin."""
        self._check_inputs(embeddings, labels)
        with self._full_precision(embeddings):
            return self._logits(embeddings.to(_compute_dtype(embeddings, self.weight)), labels)

    # ---- for subclasses ---------------------------------------------------------------------------------------

    @abstractmethod
    def _logits(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """Logits from full-precision embeddings ``x``; margin on the true class when ``labels`` is given."""

    def _update_statistics(self, x: Tensor, labels: Tensor) -> None:
        """Update running buffers from a training batch, before its logits are computed (no grad)."""

    def _regularizer(self, x: Tensor) -> Tensor | float:
        """A term added to the mean cross-entropy (MagFace's norm regulariser); 0 by default."""
        return 0.0

    def _weight(self, x: Tensor) -> Tensor:
        return self.weight.to(x.dtype)

    # ---- helpers ----------------------------------------------------------------------------------------------

    @staticmethod
    def _full_precision(embeddings: Tensor):
        device_type = embeddings.device.type
        if torch.amp.is_autocast_available(device_type):
            return torch.autocast(device_type=device_type, enabled=False)
        return nullcontext()

    def _check_inputs(self, embeddings: Tensor, labels: Tensor | None) -> None:
        name = type(self).__name__
        if not isinstance(embeddings, Tensor) or embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            shape = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
            raise ValueError(f"{name} expects embeddings of shape [batch, {self.embedding_size}], got {shape}")
        if labels is not None:
            if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
                raise ValueError(
                    f"{name} expects labels of shape [{embeddings.shape[0]}] (one per embedding), "
                    f"got {tuple(labels.shape)}"
                )
            if labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise ValueError(f"{name} expects integer class labels, got dtype {labels.dtype}")
        # One combined reduction, so a GPU step pays for a single host sync.
        bad = ~torch.isfinite(embeddings).all()
        if labels is not None and labels.numel():
            bad = bad | (labels.min() < 0) | (labels.max() >= self.num_classes)
        if bool(bad):
            finite = torch.isfinite(embeddings)
            if not finite.all():
                rows = (~finite).any(dim=1).nonzero().flatten().tolist()
                raise ValueError(
                    f"{name} got non-finite (NaN or inf) embeddings in {len(rows)} of {embeddings.shape[0]} rows "
                    f"(first rows: {rows[:5]})"
                )
            raise ValueError(
                f"{name} expects labels in [0, {self.num_classes}), got values from {int(labels.min())} "
                f"to {int(labels.max())}"
            )

    def extra_repr(self) -> str:
        parts = [f"embedding_size={self.embedding_size}", f"num_classes={self.num_classes}"]
        parts += [f"{name}={getattr(self, name)!r}" for name in self._hyperparameter_names()]
        return ", ".join(parts)

    def _hyperparameter_names(self) -> list[str]:
        return []

    # ---- the head's record: what rebuilds it (configs, checkpoints, model cards) --------------------------------

    @property
    def hparams(self) -> dict[str, Any]:
        """The head's hyperparameters: the arguments it was constructed with, except ``embedding_size`` and
        ``num_classes``, defaults included. Attributes that a schedule moves later (``margin``, ``lambda_``) keep
        their constructor values here, so ``type(head)(embedding_size, num_classes, **head.hparams)`` rebuilds it.

        Example:
            >>> from lightning_margin.heads import ArcFace
            >>> ArcFace(embedding_size=8, num_classes=4, margin=0.3).hparams
            {'scale': 64.0, 'margin': 0.3, 'easy_margin': False}
        """
        arguments = getattr(self, "_init_arguments", {})
        return {name: value for name, value in arguments.items() if name not in ("embedding_size", "num_classes")}


class CosineMarginHead(MarginHead):
    """Base of the heads whose logits are ``scale * cos(theta)`` with a margin on the true class's cosine.

    Subclasses implement :meth:`_target` (the penalised true-class cosine) and may override :meth:`_scale`
    (a per-sample scale such as SphereFace's ``||x||``) or :meth:`_cosine_logits` (sub-centres).
    """

    scale: float

    def _scale(self, x: Tensor) -> float | Tensor:
        """The factor on every cosine: the fixed ``scale`` hyperparameter, or a ``[B]`` tensor such as ``||x||``."""
        return self.scale

    def _cosine_logits(self, x: Tensor, scale: float | Tensor) -> Tensor:
        return cosine_logits(x, self._weight(x), scale)

    def _target_cosine(self, x: Tensor, labels: Tensor) -> Tensor:
        return target_cosine(x, self._weight(x), labels)

    def _target(self, cos: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        """The margin-penalised true-class cosine, ``[B]``; identity for heads without a margin."""
        return cos

    def _logits(self, x: Tensor, labels: Tensor | None) -> Tensor:
        scale = self._scale(x)
        logits = self._cosine_logits(x, scale)
        if labels is None:
            return logits
        cos = self._target_cosine(x, labels)
        target = self._target(cos.clamp(-1.0, 1.0), x, labels)
        return replace_target_logits(logits, labels, scale * target, scale * cos)

    def _hyperparameter_names(self) -> list[str]:
        return ["scale"]
