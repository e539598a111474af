"""lightning-margin: angular-margin face-recognition heads, backbones and a model zoo for PyTorch Lightning."""

# Importing backbones registers iresnet*/mobilefacenet in timm's model registry.
from lightning_margin import backbones, callbacks, functional, parallel
from lightning_margin._version import __version__
from lightning_margin.embedder import FaceEmbedder
from lightning_margin.heads import (
    AdaFace,
    ArcFace,
    CombinedMargin,
    CosFace,
    CurricularFace,
    LSoftmax,
    MagFace,
    MarginHead,
    ModifiedSoftmax,
    NormFace,
    Softmax,
    SphereFace,
    SubCenterArcFace,
    create_head,
    list_heads,
    register_head,
)
from lightning_margin.module import MarginModule

__all__ = [
    "AdaFace",
    "ArcFace",
    "CombinedMargin",
    "CosFace",
    "CurricularFace",
    "FaceEmbedder",
    "LSoftmax",
    "MagFace",
    "MarginHead",
    "MarginModule",
    "ModifiedSoftmax",
    "NormFace",
    "Softmax",
    "SphereFace",
    "SubCenterArcFace",
    "__version__",
    "backbones",
    "callbacks",
    "create_head",
    "functional",
    "list_heads",
    "parallel",
    "register_head",
]
