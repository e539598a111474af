"""CosFace / AM-Softmax: an additive margin on the cosine."""

from __future__ import annotations

from torch import Tensor

from lightning_margin._validation import check_non_negative, check_positive
from lightning_margin.functional import cosface_margin
from lightning_margin.heads.base import CosineMarginHead
from lightning_margin.heads.registry import register_head

__all__ = ["CosFace"]


@register_head("cosface")
class CosFace(CosineMarginHead):
    """CosFace (Wang et al., 2018, "CosFace: Large Margin Cosine Loss for Deep Face Recognition").

    True-class logit ``s (cos theta_y - m)``, other logits ``s cos theta_j``.

    Args:
        embedding_size: Width of the embeddings.
        num_classes: Number of identities.
        scale: The scale ``s``.
        margin: The cosine margin ``m`` (a cosine difference, not an angle).

    Example:
        >>> head = CosFace(embedding_size=512, num_classes=100)
        >>> head.scale, head.margin
        (64.0, 0.35)
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.35) -> None:
        super().__init__(embedding_size, num_classes)
        self.scale = check_positive("scale", scale)
        self.margin = check_non_negative("margin", margin)

    def apply_margin(self, cos: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        return cosface_margin(cos, self.margin)

    def _hyperparameter_names(self) -> list[str]:
        return ["scale", "margin"]
