"""Heads without a margin: plain softmax, SphereFace's modified softmax, and NormFace."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_margin._validation import check_positive
from lightning_margin.heads.base import CosineMarginHead, MarginHead
from lightning_margin.heads.registry import register_head

__all__ = ["ModifiedSoftmax", "NormFace", "Softmax"]


@register_head("softmax")
class Softmax(MarginHead):
    """Plain softmax cross-entropy on a linear layer: logits ``W_j x + b_j`` (the baseline of every margin paper).

    Args:
        embedding_size: Width of the embeddings.
        num_classes: Number of identities.
        bias: Whether the linear layer has a bias.

    Example:
        >>> import torch
        >>> head = Softmax(embedding_size=128, num_classes=10)
        >>> head(torch.randn(4, 128), torch.tensor([0, 1, 2, 3])).shape
        torch.Size([])
    """

    def __init__(self, embedding_size: int, num_classes: int, bias: bool = True) -> None:
        self.has_bias = bool(bias)
        super().__init__(embedding_size, num_classes)
        self.bias = nn.Parameter(self.weight.new_zeros(num_classes)) if self.has_bias else None

    def reset_parameters(self) -> None:
        # nn.Linear's initialisation: this head's weight norms matter, unlike the cosine heads'.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if getattr(self, "bias", None) is not None:
            nn.init.zeros_(self.bias)

    def class_parameters(self) -> dict[str, Tensor]:
        return {"weight": self.weight} if self.bias is None else {"weight": self.weight, "bias": self.bias}

    def class_logits(self, features: Tensor, weight: Tensor, *others: Tensor) -> Tensor:
        bias = others[0].to(features.dtype) if others else None
        return F.linear(features, weight.to(features.dtype), bias)

    def target_inputs(self, x: Tensor, rows: Sequence[Tensor]) -> Tensor:
        logit = super().target_inputs(x, rows)
        return logit + rows[1].to(x.dtype).unsqueeze(1) if len(rows) > 1 else logit

    def _logits(self, x: Tensor, labels: Tensor | None) -> Tensor:
        # No margin and no non-target transform: the true class keeps its class logit, so the pieces' result is
        # the class logits themselves; skipping the no-op replacement keeps this head exactly nn.Linear's cost.
        return self.class_logits(self.logit_features(x), *self.class_parameters().values())

    def _hyperparameter_names(self) -> list[str]:
        return ["has_bias"]


@register_head("modified_softmax")
class ModifiedSoftmax(CosineMarginHead):
    """SphereFace's "modified softmax" (Liu et al., 2017, §3.1): ``||W_j|| = 1``, no bias, logits ``||x|| cos theta_j``.

    Decisions depend on angles only, but the feature norm still scales the logits.

    Example:
        >>> import torch
        >>> head = ModifiedSoftmax(embedding_size=128, num_classes=10)
        >>> head.logits(torch.randn(4, 128)).shape
        torch.Size([4, 10])
    """

    def logit_scale(self, x: Tensor) -> Tensor:
        return x.norm(dim=1)

    def _hyperparameter_names(self) -> list[str]:
        return []


@register_head("normface")
class NormFace(CosineMarginHead):
    """NormFace (Wang et al., 2017): features and weights normalised, logits ``s cos theta_j``, no margin.

    Args:
        embedding_size: Width of the embeddings.
        num_classes: Number of identities.
        scale: The fixed scale ``s`` (the paper shows normalised softmax needs ``s`` well above 1 to converge).

    Example:
        >>> import torch
        >>> head = NormFace(embedding_size=128, num_classes=10, scale=16.0)
        >>> bool(head.logits(torch.randn(4, 128)).abs().max() <= 16.0)
        True
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 16.0) -> None:
        super().__init__(embedding_size, num_classes)
        self.scale = check_positive("scale", scale)
