"""Each margin head split into the two pieces a sharded, sampled or chunked loss needs.

A head's logits for class ``j`` are ``block_logits(features, W_j)`` except at the true class, whose logit is the
margin-penalised ``target_logit`` computed from the true class's own weight rows. Splitting a head this way lets
the loss compute the plain logits for any block of classes (a shard, a sample, a chunk) and the target logit on
whichever rank owns the true class. The pieces call the heads' own margin functions (``_target``, ``_scale``,
``_update_statistics``, :mod:`lightning_margin.functional`), so a sharded head follows its head's formulas.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_margin.functional import arcface_margin, curricular_negatives, sphereface_psi
from lightning_margin.functional.angles import _CosineLogits
from lightning_margin.heads import CosineMarginHead, CurricularFace, LSoftmax, MarginHead, Softmax, SubCenterArcFace

__all__ = ["HeadPieces", "head_pieces"]


class HeadPieces:
    """Cosine heads (every :class:`CosineMarginHead` that keeps the base ``_logits``): ``scale * cos`` plus a margin.

    Sub-centre heads (``rows_per_class > 1``) take the maximum over each class's rows, as SubCenterArcFace does.
    """

    def __init__(self, head: MarginHead) -> None:
        self.head = head
        self.rows_per_class = head.rows_per_class
        self.threshold: Tensor | None = None

    def parameters(self) -> list[Tensor]:
        """The class-major parameters whose rows are sharded, sampled and chunked."""
        return [self.head.weight]

    def features(self, x: Tensor) -> Tensor:
        """What every class row multiplies: here the normalised embeddings times the scale."""
        scale = self.head._scale(x)
        features = F.normalize(x, dim=1)
        return features * (scale.unsqueeze(1) if isinstance(scale, Tensor) else scale)

    def block_logits(self, features: Tensor, weight: Tensor) -> Tensor:
        """Logits of a block of classes without margin."""
        logits = _CosineLogits.apply(features, weight.to(features.dtype), True)
        if self.rows_per_class > 1:  # a positive scale commutes with the max over sub-centres
            logits = logits.view(features.shape[0], -1, self.rows_per_class).amax(dim=2)
        return logits

    def target_inputs(self, x: Tensor, rows: list[Tensor]) -> Tensor:
        """``[B, k]``: what the true-class logit needs from the true class's parameter rows (``rows``: for each
        parameter, the rows of every embedding's true class), computed where those rows live.

        Here ``cos theta_y``: the maximum over the sub-centres.
        """
        weight = rows[0].to(x.dtype).view(x.shape[0], self.rows_per_class, x.shape[1])
        cos = (F.normalize(weight, dim=2) @ F.normalize(x, dim=1).unsqueeze(2)).squeeze(2)
        return cos.amax(dim=1, keepdim=True)

    def target_logits(self, inputs: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        """The margin-penalised true-class logits ``[B]`` from :meth:`target_inputs` of every row."""
        cos = inputs[:, 0].clamp(-1.0, 1.0)
        return self.head._scale(x) * self.head._target(cos, x, labels)

    def update_statistics(self, x: Tensor, labels: Tensor, inputs: Tensor) -> None:
        """Training-mode buffer updates (AdaFace's norm statistics), before the logits, on the global batch."""
        self.head._update_statistics(x, labels)

    def prepare(self, target_logits: Tensor) -> None:
        """Receive the target logits of every row (values, no gradient) before any block is computed."""

    def regularizer(self, x: Tensor) -> Tensor | float:
        return self.head._regularizer(x)


class _CurricularPieces(HeadPieces):
    """CurricularFace: negatives above the penalised target cosine become ``cos (t + cos)``."""

    head: CurricularFace

    def features(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1)

    def block_logits(self, features: Tensor, weight: Tensor) -> Tensor:
        cos = _CosineLogits.apply(features, weight.to(features.dtype), True)
        return self.head.scale * curricular_negatives(cos, self.threshold, self.head.t.to(cos.dtype))

    def target_logits(self, inputs: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        return self.head.scale * arcface_margin(inputs[:, 0].clamp(-1.0, 1.0), self.head.margin)

    def update_statistics(self, x: Tensor, labels: Tensor, inputs: Tensor) -> None:
        # The head's own update needs every row's true-class weight; the loss passes the all-reduced cosines.
        t, cos = self.head.t, inputs[:, 0].clamp(-1.0, 1.0)
        t.mul_(1.0 - self.head.momentum).add_(self.head.momentum * cos.mean().to(t.dtype))

    def prepare(self, target_logits: Tensor) -> None:
        self.threshold = (target_logits / self.head.scale).detach()


class _LinearPieces(HeadPieces):
    """Plain softmax: ``W_j x + b_j`` for every class, the true class included."""

    head: Softmax

    def parameters(self) -> list[Tensor]:
        return [self.head.weight] if self.head.bias is None else [self.head.weight, self.head.bias]

    def features(self, x: Tensor) -> Tensor:
        return x

    def block_logits(self, features: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.linear(features, weight.to(features.dtype), None if bias is None else bias.to(features.dtype))

    def target_inputs(self, x: Tensor, rows: list[Tensor]) -> Tensor:
        logit = (x * rows[0].to(x.dtype)).sum(dim=1)
        if len(rows) > 1:
            logit = logit + rows[1].to(x.dtype)
        return logit.unsqueeze(1)

    def target_logits(self, inputs: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        return inputs[:, 0]

    def update_statistics(self, x: Tensor, labels: Tensor, inputs: Tensor) -> None:
        """No running buffers."""


class _LSoftmaxPieces(_LinearPieces):
    """L-Softmax: ``W_j x`` for the negatives, ``||W_y|| ||x|| (lambda cos + psi) / (1 + lambda)`` for the target."""

    head: LSoftmax

    def parameters(self) -> list[Tensor]:
        return [self.head.weight]

    def target_inputs(self, x: Tensor, rows: list[Tensor]) -> Tensor:
        weight = rows[0].to(x.dtype)
        cos = (F.normalize(x, dim=1) * F.normalize(weight, dim=1)).sum(dim=1)
        return torch.stack([cos, weight.norm(dim=1)], dim=1)

    def target_logits(self, inputs: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        cos, row_norms = inputs[:, 0].clamp(-1.0, 1.0), inputs[:, 1]
        psi = sphereface_psi(cos, int(self.head.margin))
        return x.norm(dim=1) * row_norms * (self.head.lambda_ * cos + psi) / (1.0 + self.head.lambda_)


def head_pieces(head: MarginHead) -> HeadPieces:
    """The pieces of ``head``; ``TypeError`` for a head whose logits do not follow one of the supported forms."""
    cls = type(head)
    if isinstance(head, CurricularFace) and cls._logits is CurricularFace._logits:
        return _CurricularPieces(head)
    if isinstance(head, LSoftmax) and cls._logits is LSoftmax._logits:
        return _LSoftmaxPieces(head)
    if isinstance(head, Softmax) and cls._logits is Softmax._logits:
        return _LinearPieces(head)
    # Sub-centres are the one known change of the cosine matrix (a max over each class's rows).
    known_cosines = (CosineMarginHead._cosine_logits, SubCenterArcFace._cosine_logits)
    known_targets = (CosineMarginHead._target_cosine, SubCenterArcFace._target_cosine)
    if (
        isinstance(head, CosineMarginHead)
        and cls._logits is CosineMarginHead._logits
        and cls._cosine_logits in known_cosines
        and cls._target_cosine in known_targets
    ):
        return HeadPieces(head)
    raise TypeError(
        f"{cls.__name__} computes its logits in its own way (it overrides `_logits` or its cosines), so it "
        "cannot be sharded, sampled or chunked; supported: every CosineMarginHead that keeps the base logits "
        "(ArcFace, CosFace, SphereFace, NormFace, ModifiedSoftmax, CombinedMargin, SubCenterArcFace, AdaFace, "
        "MagFace), CurricularFace, LSoftmax and Softmax"
    )
