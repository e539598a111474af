"""MagFace: a margin and a regulariser on the feature magnitude, which becomes a quality score."""

from __future__ import annotations

from torch import Tensor

from lightning_margin._validation import check_non_negative, check_positive
from lightning_margin.functional import arcface_margin, magface_margin, magface_regularizer
from lightning_margin.heads.base import CosineMarginHead
from lightning_margin.heads.registry import register_head

__all__ = ["MagFace"]


@register_head("magface")
class MagFace(CosineMarginHead):
    """MagFace (Meng et al., 2021, "MagFace: A Universal Representation for Face Recognition and Quality Assessment").

    With ``a = clamp(||x||, l_a, u_a)``: true-class logit ``s cos(theta_y + m(a))``, the margin rising linearly
    from ``l_m`` at ``l_a`` to ``u_m`` at ``u_a``; the loss adds ``lambda_g * mean(g(a))`` with
    ``g(a) = 1/a + a/u_a^2``, which pulls the norms of easy (high-quality) samples up. Embeddings must therefore
    not be normalised before the head. Defaults are the paper's MS1MV2 settings.

    Args:
        embedding_size: Width of the embeddings.
        num_classes: Number of identities.
        scale: The scale ``s``.
        lower_norm: ``l_a``.
        upper_norm: ``u_a``.
        lower_margin: ``l_m``, the margin at ``l_a`` (radians).
        upper_margin: ``u_m``, the margin at ``u_a`` (radians).
        regularizer_weight: ``lambda_g``.

    Example:
        >>> import torch
        >>> head = MagFace(embedding_size=512, num_classes=100)
        >>> loss = head(20 * torch.nn.functional.normalize(torch.randn(8, 512)), torch.randint(0, 100, (8,)))
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        lower_norm: float = 10.0,
        upper_norm: float = 110.0,
        lower_margin: float = 0.45,
        upper_margin: float = 0.8,
        regularizer_weight: float = 35.0,
    ) -> None:
        super().__init__(embedding_size, num_classes)
        self.scale = check_positive("scale", scale)
        self.lower_norm = check_positive("lower_norm", lower_norm)
        self.upper_norm = check_positive("upper_norm", upper_norm)
        if self.upper_norm <= self.lower_norm:
            raise ValueError(f"`upper_norm` ({upper_norm}) must be larger than `lower_norm` ({lower_norm})")
        self.lower_margin = check_non_negative("lower_margin", lower_margin)
        self.upper_margin = check_non_negative("upper_margin", upper_margin)
        self.regularizer_weight = check_non_negative("regularizer_weight", regularizer_weight)

    def apply_margin(self, cos: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        margin = magface_margin(x.norm(dim=1), self.lower_norm, self.upper_norm, self.lower_margin, self.upper_margin)
        return arcface_margin(cos, margin)

    def regularizer(self, x: Tensor) -> Tensor:
        return self.regularizer_weight * magface_regularizer(x.norm(dim=1), self.lower_norm, self.upper_norm).mean()

    def _hyperparameter_names(self) -> list[str]:
        return ["scale", "lower_norm", "upper_norm", "lower_margin", "upper_margin", "regularizer_weight"]
