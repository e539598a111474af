"""The combined margin: SphereFace's, ArcFace's and CosFace's margins in one formula."""

from __future__ import annotations

import math

from torch import Tensor

from lightning_margin._validation import check_non_negative, check_positive, check_range
from lightning_margin.functional import combined_margin
from lightning_margin.heads.base import CosineMarginHead
from lightning_margin.heads.registry import register_head

__all__ = ["CombinedMargin"]


@register_head("combined")
class CombinedMargin(CosineMarginHead):
    """Combined margin (Deng et al., 2019, ArcFace paper eq. 4): true-class logit ``s (cos(m1 theta_y + m2) - m3)``.

    ``m1`` is SphereFace's multiplicative angular margin (real-valued here), ``m2`` ArcFace's additive angular
    margin (radians), ``m3`` CosFace's additive cosine margin. Past ``theta* = (pi - m2) / m1`` the target
    continues as ``cos theta - cos theta* - 1 - m3`` (continuous and decreasing; see
    :func:`~lightning_margin.functional.combined_margin`).

    Args:
        embedding_size: Width of the embeddings.
        num_classes: Number of identities.
        scale: The scale ``s``.
        m1: Multiplicative angular margin (> 0; 1 disables it).
        m2: Additive angular margin in radians, in [0, pi).
        m3: Additive cosine margin (>= 0).
        gradient: The backward pass through the margin: ``"exact"`` (its derivative) or ``"straight_through"``
            (insightface's: the margin is the identity in the backward pass, ``d loss / d cos theta_y = s (p_y - 1)``).

    Example:
        >>> import torch
        >>> head = CombinedMargin(embedding_size=512, num_classes=100, m1=1.0, m2=0.3, m3=0.2)
        >>> head.logits(torch.randn(2, 512)).shape
        torch.Size([2, 100])
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.3,
        m3: float = 0.2,
        gradient: str = "exact",
    ) -> None:
        super().__init__(embedding_size, num_classes)
        self.scale = check_positive("scale", scale)
        self.m1 = check_positive("m1", m1)
        self.m2 = check_range("m2", m2, 0.0, math.pi, high_inclusive=False)
        self.m3 = check_non_negative("m3", m3)
        self._set_gradient(gradient)

    def apply_margin(self, cos: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        return combined_margin(cos, self.m1, self.m2, self.m3)

    def _hyperparameter_names(self) -> list[str]:
        return ["scale", "m1", "m2", "m3"]
