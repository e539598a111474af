"""Sub-center ArcFace: K centres per class, the nearest one counts."""

from __future__ import annotations

from lightning_margin._validation import check_integer
from lightning_margin.heads.arcface import ArcFace
from lightning_margin.heads.base import CosineMarginHead
from lightning_margin.heads.registry import register_head

__all__ = ["SubCenterArcFace"]


@register_head("subcenter_arcface")
class SubCenterArcFace(ArcFace):
    """Sub-center ArcFace (Deng et al., 2020, "Sub-center ArcFace: Boosting Face Recognition by Large-Scale Noisy
    Web Faces").

    Each class has ``K`` centres (weight rows ``j*K .. j*K+K-1``); ``cos theta_j = max_k cos theta_{j,k}``, then
    ArcFace. Noisy samples gather around non-dominant sub-centres instead of pulling the dominant one.

    Args:
        embedding_size: Width of the embeddings.
        num_classes: Number of identities.
        scale: The scale ``s``.
        margin: The angular margin ``m`` in radians.
        num_subcenters: ``K`` (the paper uses 3).
        easy_margin: As in :class:`ArcFace`.
        gradient: As in :class:`ArcFace`: ``"exact"`` or ``"straight_through"``.

    Example:
        >>> head = SubCenterArcFace(embedding_size=512, num_classes=100, num_subcenters=3)
        >>> head.weight.shape
        torch.Size([300, 512])
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        margin: float = 0.5,
        num_subcenters: int = 3,
        easy_margin: bool = False,
        gradient: str = "exact",
    ) -> None:
        num_subcenters = check_integer("num_subcenters", num_subcenters)
        # ArcFace's constructor has one weight row per class: build the K-row weight directly.
        CosineMarginHead.__init__(self, embedding_size, num_classes, rows_per_class=num_subcenters)
        self._set_hyperparameters(scale, margin, easy_margin, gradient)
        self.num_subcenters = num_subcenters

    def _hyperparameter_names(self) -> list[str]:
        return [*super()._hyperparameter_names(), "num_subcenters"]
