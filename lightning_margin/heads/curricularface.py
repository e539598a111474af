"""CurricularFace: ArcFace plus an adaptive curriculum on hard negatives."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_margin._validation import check_positive, check_range
from lightning_margin.functional import arcface_margin, curricular_negatives
from lightning_margin.heads.base import CosineMarginHead
from lightning_margin.heads.registry import register_head

__all__ = ["CurricularFace"]


@register_head("curricularface")
class CurricularFace(CosineMarginHead):
    """CurricularFace (Huang et al., 2020, "CurricularFace: Adaptive Curriculum Learning Loss for Deep Face
    Recognition").

    True-class logit ``s cos(theta_y + m)`` (ArcFace). A negative whose cosine exceeds that penalised target is
    hard and becomes ``s cos theta_j (t + cos theta_j)``; easy negatives stay ``s cos theta_j``. The buffer ``t``
    is the running mean of ``cos theta_y``, updated in every training forward as
    ``t <- (1 - momentum) t + momentum * mean(cos theta_y)`` before the logits are computed: early in training
    ``t ~ 0`` de-emphasises hard negatives, later ``t -> 1`` emphasises them.

    Args:
        embedding_size: Width of the embeddings.
        num_classes: Number of identities.
        scale: The scale ``s``.
        margin: The angular margin ``m`` in radians.
        momentum: Weight of the current batch in the running mean ``t`` (the paper's ``1 - alpha``, 0.01).
        gradient: The backward pass through the true class's ArcFace margin: ``"exact"`` or ``"straight_through"``
            (the margin is the identity in the backward pass); the hard negatives' re-weighting keeps its gradient.

    Example:
        >>> head = CurricularFace(embedding_size=512, num_classes=100)
        >>> float(head.t)
        0.0
    """

    t: Tensor

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        margin: float = 0.5,
        momentum: float = 0.01,
        gradient: str = "exact",
    ) -> None:
        super().__init__(embedding_size, num_classes)
        self.scale = check_positive("scale", scale)
        self.margin = check_range("margin", margin, 0.0, math.pi, high_inclusive=False)
        self.momentum = check_range("momentum", momentum, 0.0, 1.0)
        self._set_gradient(gradient)
        self.register_buffer("t", torch.zeros(()))

    def update_statistics(self, x: Tensor, labels: Tensor, inputs: Tensor) -> None:
        cos = inputs[:, 0].clamp(-1.0, 1.0)
        self.t.mul_(1.0 - self.momentum).add_(self.momentum * cos.mean().to(self.t.dtype))

    def apply_margin(self, cos: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        return arcface_margin(cos, self.margin)

    def non_target_logits(self, logits: Tensor, target_logits: Tensor) -> Tensor:
        # The curriculum compares and re-weights cosines: the logits are s * cos with a fixed positive s.
        cos, target = logits / self.scale, target_logits / self.scale
        return self.scale * curricular_negatives(cos, target, self.t.to(logits.dtype))

    def _hyperparameter_names(self) -> list[str]:
        return ["scale", "margin", "momentum"]
