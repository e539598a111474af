"""ArcFace: an additive angular margin."""

from __future__ import annotations

import math

from torch import Tensor

from lightning_margin._validation import check_positive, check_range
from lightning_margin.functional import arcface_margin
from lightning_margin.heads.base import CosineMarginHead
from lightning_margin.heads.registry import register_head

__all__ = ["ArcFace"]


@register_head("arcface")
class ArcFace(CosineMarginHead):
    """ArcFace (Deng et al., 2019, "ArcFace: Additive Angular Margin Loss for Deep Face Recognition").

    True-class logit ``s cos(theta_y + m)``, other logits ``s cos theta_j``. Where ``theta_y + m`` would pass pi
    the target continues as ``s (cos theta_y + cos m - 1)``: continuous and still decreasing in ``theta``
    (see :func:`~lightning_margin.functional.combined_margin` for why this rule).

    Args:
        embedding_size: Width of the embeddings.
        num_classes: Number of identities.
        scale: The scale ``s``.
        margin: The angular margin ``m`` in radians (0.5 rad is about 28.6 degrees).
        easy_margin: Apply the margin only where ``cos theta_y > 0``.
        gradient: The backward pass through the margin: ``"exact"`` (its derivative) or ``"straight_through"``
            (insightface's: the margin is the identity in the backward pass, ``d loss / d cos theta_y = s (p_y - 1)``).

    Example:
        >>> import torch
        >>> head = ArcFace(embedding_size=512, num_classes=100, scale=64.0, margin=0.5)
        >>> loss = head(torch.randn(8, 512), torch.randint(0, 100, (8,)))
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        margin: float = 0.5,
        easy_margin: bool = False,
        gradient: str = "exact",
    ) -> None:
        super().__init__(embedding_size, num_classes)
        self._set_hyperparameters(scale, margin, easy_margin, gradient)

    def _set_hyperparameters(self, scale: float, margin: float, easy_margin: bool, gradient: str) -> None:
        self.scale = check_positive("scale", scale)
        self.margin = check_range("margin", margin, 0.0, math.pi, high_inclusive=False)
        self.easy_margin = bool(easy_margin)
        self._set_gradient(gradient)

    def apply_margin(self, cos: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        return arcface_margin(cos, self.margin, self.easy_margin)

    def _hyperparameter_names(self) -> list[str]:
        return ["scale", "margin", "easy_margin"]
