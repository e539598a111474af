"""AdaFace: a margin that adapts to image quality, measured by the feature norm."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_margin._validation import check_non_negative, check_positive, check_range
from lightning_margin.functional import adaface_margins, combined_margin
from lightning_margin.heads.base import CosineMarginHead
from lightning_margin.heads.registry import register_head

__all__ = ["AdaFace"]

# The paper clips feature norms to this range before measuring quality.
_NORM_RANGE = (0.001, 100.0)


@register_head("adaface")
class AdaFace(CosineMarginHead):
    """AdaFace (Kim et al., 2022, "AdaFace: Quality Adaptive Margin for Face Recognition").

    With ``z = clip((||x|| - mu) / (sigma + 1e-3) * h, -1, 1)`` (``mu``, ``sigma``: running mean and std of the
    batch feature norms), the true-class logit is ``s (cos(theta_y + g_angle) - g_add)`` with
    ``g_angle = -m z`` and ``g_add = m z + m``: high-quality (large-norm) samples get an ArcFace-like angular
    margin, low-quality ones a CosFace-like additive one. Buffers ``batch_mean`` (init 20) and ``batch_std``
    (init 100) are updated in every training forward, before the logits, with ``momentum``.

    Args:
        embedding_size: Width of the embeddings.
        num_classes: Number of identities.
        scale: The scale ``s``.
        margin: The margin ``m``.
        concentration: The paper's ``h``: how much of the norm distribution maps into [-1, 1].
        momentum: Weight of the current batch in the running norm statistics (the paper's 0.01).

    Example:
        >>> head = AdaFace(embedding_size=512, num_classes=100)
        >>> float(head.batch_mean), float(head.batch_std)
        (20.0, 100.0)
    """

    batch_mean: Tensor
    batch_std: Tensor

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        margin: float = 0.4,
        concentration: float = 0.333,
        momentum: float = 0.01,
    ) -> None:
        super().__init__(embedding_size, num_classes)
        self.scale = check_positive("scale", scale)
        self.margin = check_non_negative("margin", margin)
        self.concentration = check_positive("concentration", concentration)
        self.momentum = check_range("momentum", momentum, 0.0, 1.0)
        self.register_buffer("batch_mean", torch.full((), 20.0))
        self.register_buffer("batch_std", torch.full((), 100.0))

    @staticmethod
    def _norms(x: Tensor) -> Tensor:
        return x.detach().norm(dim=1).clamp(*_NORM_RANGE)

    def update_statistics(self, x: Tensor, labels: Tensor, inputs: Tensor) -> None:
        norms = self._norms(x)
        self.batch_mean.mul_(1.0 - self.momentum).add_(self.momentum * norms.mean().to(self.batch_mean.dtype))
        if norms.numel() > 1:  # the unbiased std of one sample is undefined
            self.batch_std.mul_(1.0 - self.momentum).add_(self.momentum * norms.std().to(self.batch_std.dtype))

    def apply_margin(self, cos: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        mean, std = self.batch_mean.to(x.dtype), self.batch_std.to(x.dtype)
        g_angle, g_add = adaface_margins(self._norms(x), mean, std, self.margin, self.concentration)
        return combined_margin(cos, 1.0, g_angle, g_add)

    def _hyperparameter_names(self) -> list[str]:
        return ["scale", "margin", "concentration", "momentum"]
