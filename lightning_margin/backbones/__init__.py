"""Face-recognition backbones registered in timm's model registry.

Importing this package registers ``iresnet18``, ``iresnet34``, ``iresnet50``, ``iresnet100``, ``iresnet200``
(ArcFace's improved residual networks), AdaFace's ``ir_18``, ``ir_34``, ``ir_50``, ``ir_101`` and ``ir_se_50`` (the
same trunks in TreB1eN's layout), ``mobilefacenet`` (Chen et al., 2018), insightface's wider ``mbf`` and
``mbf_large``, and ``dlib_resnet`` (dlib's face-recognition ResNet), so that they are built like any timm model.

Example:
    >>> import timm
    >>> import lightning_margin.backbones
    >>> timm.list_models("iresnet*")
    ['iresnet18', 'iresnet34', 'iresnet50', 'iresnet100', 'iresnet200']
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
    ADAFACE_IR,
    IRESNET_LAYERS,
    IRESNET_POOL_TYPES,
    IRESNET_SHORTCUTS,
    IRBlock,
    IResNet,
    SqueezeExcite,
    ir_18,
    ir_34,
    ir_50,
    ir_101,
    ir_se_50,
    iresnet18,
    iresnet34,
    iresnet50,
    iresnet100,
    iresnet200,
)
from lightning_margin.backbones.mbf import MBF, MBF_VARIANTS, mbf, mbf_large
from lightning_margin.backbones.mobilefacenet import (
    MOBILEFACENET_BOTTLENECKS,
    MOBILEFACENET_POOL_TYPES,
    Bottleneck,
    ConvBnPReLU,
    GDCFaceNet,
    MobileFaceNet,
    mobilefacenet,
)

__all__ = [
    "ADAFACE_IR",
    "DLIB_RESNET_STAGES",
    "FACE_BACKBONES",
    "IRESNET_LAYERS",
    "IRESNET_POOL_TYPES",
    "IRESNET_SHORTCUTS",
    "MBF",
    "MBF_VARIANTS",
    "MOBILEFACENET_BOTTLENECKS",
    "MOBILEFACENET_POOL_TYPES",
    "Bottleneck",
    "ChannelAffine",
    "ConvBnPReLU",
    "DlibResNet",
    "DlibResidualBlock",
    "GDCFaceNet",
    "IRBlock",
    "IResNet",
    "MobileFaceNet",
    "SqueezeExcite",
    "build_backbone",
    "dlib_resnet",
    "feature_width",
    "ir_18",
    "ir_34",
    "ir_50",
    "ir_101",
    "ir_se_50",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "iresnet200",
    "mbf",
    "mbf_large",
    "mobilefacenet",
]
