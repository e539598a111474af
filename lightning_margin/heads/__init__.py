"""Margin heads: the classifier + loss that turns embeddings and labels into a face-recognition training signal.

Every head is ``Head(embedding_size, num_classes, **hyperparameters)`` with a ``weight`` of shape
``[num_classes, embedding_size]``, ``head(embeddings, labels) -> loss`` and ``head.logits(embeddings, labels=None)``.
Build them by name with :func:`create_head`; :func:`list_heads` lists the names.
"""

from lightning_margin.heads.adaface import AdaFace
from lightning_margin.heads.arcface import ArcFace
from lightning_margin.heads.base import CosineMarginHead, MarginHead
from lightning_margin.heads.combined import CombinedMargin
from lightning_margin.heads.cosface import CosFace
from lightning_margin.heads.curricularface import CurricularFace
from lightning_margin.heads.lsoftmax import LSoftmax
from lightning_margin.heads.magface import MagFace
from lightning_margin.heads.registry import (
    HeadCallable,
    create_head,
    get_head_class,
    get_head_name,
    head_config,
    list_heads,
    register_head,
)
from lightning_margin.heads.softmax import ModifiedSoftmax, NormFace, Softmax
from lightning_margin.heads.sphereface import SphereFace
from lightning_margin.heads.subcenter_arcface import SubCenterArcFace

__all__ = [
    "AdaFace",
    "ArcFace",
    "CombinedMargin",
    "CosFace",
    "CosineMarginHead",
    "CurricularFace",
    "HeadCallable",
    "LSoftmax",
    "MagFace",
    "MarginHead",
    "ModifiedSoftmax",
    "NormFace",
    "Softmax",
    "SphereFace",
    "SubCenterArcFace",
    "create_head",
    "get_head_class",
    "get_head_name",
    "head_config",
    "list_heads",
    "register_head",
]
