"""L-Softmax: a multiplicative angular margin on an unnormalised linear layer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_margin._validation import check_integer, check_non_negative
from lightning_margin.functional import paired_cosines, sphereface_psi
from lightning_margin.heads.base import MarginHead
from lightning_margin.heads.registry import register_head

__all__ = ["LSoftmax"]


@register_head("lsoftmax")
class LSoftmax(MarginHead):
    """L-Softmax (Liu et al., 2016, "Large-Margin Softmax Loss for Convolutional Neural Networks").

    True-class logit ``||W_y|| ||x|| (lambda cos theta_y + psi(theta_y)) / (1 + lambda)``, other logits
    ``W_j x``; weights are *not* normalised and there is no bias. ``psi`` is
    :func:`~lightning_margin.functional.sphereface_psi`. The paper anneals ``lambda`` from a large value down
    (use :class:`~lightning_margin.callbacks.SphereFaceAnnealing`); ``lambda = 0`` is the pure margin.

    Args:
        embedding_size: Width of the embeddings.
        num_classes: Number of identities.
        margin: The integer angular multiplier ``m`` (1 is plain softmax without bias).
        lambda_: The current blend weight ``lambda >= 0``.

    Example:
        >>> import torch
        >>> head = LSoftmax(embedding_size=64, num_classes=10, margin=2)
        >>> head.logits(torch.randn(4, 64), torch.tensor([0, 1, 2, 3])).shape
        torch.Size([4, 10])
    """

    def __init__(self, embedding_size: int, num_classes: int, margin: int = 4, lambda_: float = 0.0) -> None:
        super().__init__(embedding_size, num_classes)
        self.margin = check_integer("margin", margin)
        self.lambda_ = check_non_negative("lambda_", lambda_)

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def target_inputs(self, x: Tensor, rows: Sequence[Tensor]) -> Tensor:
        """``[B, 3]``: ``cos theta_y``, ``||W_y||`` and the plain logit ``W_y x``, from the true class's row."""
        weight = rows[0].to(x.dtype)
        return torch.cat(
            [paired_cosines(x, weight), weight.norm(dim=1, keepdim=True), super().target_inputs(x, rows)], 1
        )

    def target_logits(self, inputs: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        cos, row_norms = inputs[:, 0].clamp(-1.0, 1.0), inputs[:, 1]
        psi = sphereface_psi(cos, int(self.margin))
        return x.norm(dim=1) * row_norms * (self.lambda_ * cos + psi) / (1.0 + self.lambda_)

    def plain_target_logits(self, inputs: Tensor, x: Tensor) -> Tensor:
        return inputs[:, 2]

    def _hyperparameter_names(self) -> list[str]:
        return ["margin", "lambda_"]
