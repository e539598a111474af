"""SphereFace / A-Softmax: a multiplicative angular margin on normalised weights."""

from __future__ import annotations

from torch import Tensor

from lightning_margin._validation import check_integer, check_non_negative
from lightning_margin.functional import sphereface_psi
from lightning_margin.heads.base import CosineMarginHead
from lightning_margin.heads.registry import register_head

__all__ = ["SphereFace"]


@register_head("sphereface")
class SphereFace(CosineMarginHead):
    """SphereFace / A-Softmax (Liu et al., 2017, "SphereFace: Deep Hypersphere Embedding for Face Recognition").

    ``||W_j|| = 1``, no bias. True-class logit ``||x|| (lambda cos theta_y + psi(theta_y)) / (1 + lambda)`` with
    ``psi(theta) = (-1)^k cos(m theta) - 2k`` for ``theta`` in ``[k pi/m, (k+1) pi/m]``; other logits
    ``||x|| cos theta_j``. Training from scratch needs ``lambda`` annealed from ~1000 down to ~5
    (:class:`~lightning_margin.callbacks.SphereFaceAnnealing` sets ``lambda_`` every step).

    Args:
        embedding_size: Width of the embeddings.
        num_classes: Number of identities.
        margin: The integer angular multiplier ``m`` (the paper uses 4).
        lambda_: The current blend weight ``lambda >= 0`` (0: the pure A-Softmax margin).

    Example:
        >>> import torch
        >>> head = SphereFace(embedding_size=512, num_classes=100, margin=4, lambda_=5.0)
        >>> head(torch.randn(8, 512), torch.randint(0, 100, (8,))).ndim
        0
    """

    def __init__(self, embedding_size: int, num_classes: int, margin: int = 4, lambda_: float = 0.0) -> None:
        super().__init__(embedding_size, num_classes)
        self.margin = check_integer("margin", margin)
        self.lambda_ = check_non_negative("lambda_", lambda_)

    def logit_scale(self, x: Tensor) -> Tensor:
        return x.norm(dim=1)

    def apply_margin(self, cos: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        return (self.lambda_ * cos + sphereface_psi(cos, int(self.margin))) / (1.0 + self.lambda_)

    def _hyperparameter_names(self) -> list[str]:
        return ["margin", "lambda_"]
