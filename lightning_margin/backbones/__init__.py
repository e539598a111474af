"""Face-recognition backbones registered in timm's model registry.

Importing this package registers ``iresnet18``, ``iresnet34``, ``iresnet50``, ``iresnet100`` (ArcFace's improved
residual networks), ``mobilefacenet`` (Chen et al., 2018) and ``dlib_resnet`` (dlib's face-recognition ResNet), so
that they are built like any timm model.

Example:
    >>> import timm
    >>> import lightning_margin.backbones
    >>> timm.list_models("iresnet*")
    ['iresnet18', 'iresnet34', 'iresnet50', 'iresnet100']
    >>> timm.create_model("iresnet18", num_classes=0).num_features
    512
"""

from lightning_margin.backbones.dlib_resnet import (
    DLIB_RESNET_STAGES,
    ChannelAffine,
    DlibResidualBlock,
    DlibResNet,
    dlib_resnet,
)
from lightning_margin.backbones.factory import FACE_BACKBONES, build_backbone, feature_width
from lightning_margin.backbones.iresnet import (
    IRESNET_LAYERS,
    IRESNET_POOL_TYPES,
    IRBlock,
    IResNet,
    iresnet18,
    iresnet34,
    iresnet50,
    iresnet100,
)
from lightning_margin.backbones.mobilefacenet import (
    MOBILEFACENET_BOTTLENECKS,
    MOBILEFACENET_POOL_TYPES,
    Bottleneck,
    ConvBnPReLU,
    MobileFaceNet,
    mobilefacenet,
)

__all__ = [
    "DLIB_RESNET_STAGES",
    "FACE_BACKBONES",
    "IRESNET_LAYERS",
    "IRESNET_POOL_TYPES",
    "MOBILEFACENET_BOTTLENECKS",
    "MOBILEFACENET_POOL_TYPES",
    "Bottleneck",
    "ChannelAffine",
    "ConvBnPReLU",
    "DlibResNet",
    "DlibResidualBlock",
    "IRBlock",
    "IResNet",
    "MobileFaceNet",
    "build_backbone",
    "dlib_resnet",
    "feature_width",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "mobilefacenet",
]
