"""MobileFaceNet (Chen et al., 2018), a ~1M-parameter face embedder, registered in timm.

The network follows Table 1 of "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification on Mobile
Devices": a 3x3 stride-2 convolution and a 3x3 depthwise convolution (64 channels), MobileNetV2 bottlenecks with
expansion 2 or 4 and PReLU, a 1x1 convolution to 512 channels, a linear global depthwise convolution (GDC, kernel =
the whole 7x7 map) and a linear 1x1 convolution to the 128-d embedding. Every convolution is followed by BN.

Importing this module registers ``mobilefacenet`` with timm::

    import timm
    import lightning_margin.backbones  # noqa: F401

    model = timm.create_model("mobilefacenet", num_classes=0)  # (N, 3, 112, 112) -> (N, 128)
    model_96 = timm.create_model("mobilefacenet", num_classes=0, img_size=96)  # GDC kernel 6x6
    any_size = timm.create_model("mobilefacenet", num_classes=0, global_pool="avg")  # mean instead of GDC

No pretrained weights are published with this package: ``pretrained=True`` raises timm's "No pretrained weights exist"
error unless a checkpoint is supplied through ``pretrained_cfg_overlay=dict(file=...)``.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from lightning_margin.backbones._helpers import downsampled_size, module_device_dtype, to_size_pair

__all__ = [
    "MOBILEFACENET_BOTTLENECKS",
    "MOBILEFACENET_POOL_TYPES",
    "Bottleneck",
    "ConvBnPReLU",
    "GDCFaceNet",
    "MobileFaceNet",
    "mobilefacenet",
]

#: Table 1 of the paper, bottleneck rows as (expansion, out_channels, repeats, stride of the first repeat).
MOBILEFACENET_BOTTLENECKS: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)

#: Accepted ``global_pool`` values: the paper's global depthwise convolution, or a plain spatial mean.
MOBILEFACENET_POOL_TYPES: tuple[str, ...] = ("gdc", "avg")

# Channels of the 3x3 stem, the depthwise stem and the 1x1 convolution before the GDC (paper, Table 1).
_STEM_CHANNELS = 64
_HEAD_CHANNELS = 512
# Stride-2 layers before the GDC: the stem and the three strided bottleneck rows (112 -> 56 -> 28 -> 14 -> 7).
_NUM_HALVINGS = 1 + sum(1 for *_, stride in MOBILEFACENET_BOTTLENECKS if stride == 2)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ConvBnPReLU(nn.Module):
    """Convolution (no bias) + BatchNorm + optional PReLU: MobileFaceNet's basic layer.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel side, or ``(height, width)``.
        stride: Convolution stride.
        padding: Zero padding; ``None`` uses ``kernel_size // 2`` ("same" size at stride 1).
        groups: Convolution groups (``in_channels`` for a depthwise convolution).
        activation: Append a PReLU; ``False`` gives the paper's "linear" layers.

    Example:
        >>> layer = ConvBnPReLU(3, 64, kernel_size=3, stride=2)
        >>> layer(torch.zeros(2, 3, 112, 112)).shape
        torch.Size([2, 64, 56, 56])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 1,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        activation: bool = True,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = (kernel_size if isinstance(kernel_size, int) else kernel_size[0]) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act: nn.Module = nn.PReLU(out_channels) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """MobileNetV2 inverted residual (Sandler et al., 2018) with PReLU, as used by MobileFaceNet.

    1x1 expansion (BN, PReLU) -> 3x3 depthwise with the stride (BN, PReLU) -> linear 1x1 projection (BN), plus the
    input when the stride is 1 and the channel count is unchanged.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        expansion: Hidden width as a multiple of ``in_channels``.
        stride: Stride of the depthwise convolution (1 or 2).
        hidden_channels: The hidden width itself, overriding ``in_channels * expansion`` (insightface's wider
            ``mbf`` keeps the paper's hidden widths while its outer widths double).

    Example:
        >>> block = Bottleneck(64, 128, expansion=4, stride=2)
        >>> block(torch.zeros(2, 64, 28, 28)).shape
        torch.Size([2, 128, 14, 14])
    """

    def __init__(
        self, in_channels: int, out_channels: int, expansion: int, stride: int = 1, hidden_channels: int | None = None
    ) -> None:
        super().__init__()
        hidden = in_channels * expansion if hidden_channels is None else hidden_channels
        self.has_skip = stride == 1 and in_channels == out_channels
        self.expand = ConvBnPReLU(in_channels, hidden, kernel_size=1)
        self.depthwise = ConvBnPReLU(hidden, hidden, kernel_size=3, stride=stride, groups=hidden)
        self.project = ConvBnPReLU(hidden, out_channels, kernel_size=1, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.has_skip else out


class GDCFaceNet(nn.Module):
    """The part the MobileFaceNet family shares after its trunk: 1x1 convolution to 512 channels, global pooling
    (the paper's global depthwise convolution, GDC, or a mean), a bias-free Linear to the embedding + BN, dropout and
    an optional classifier.

    Subclasses build ``stem``, ``stem_dw``, ``stages`` and ``feature_info`` (the trunk, which
    :meth:`forward_features` runs in that order), then call :meth:`_init_head` with the trunk's output width.
    """

    def _check_arguments(
        self, num_classes: int, in_chans: int, embedding_size: int, global_pool: str, drop_rate: float
    ) -> None:
        if global_pool not in MOBILEFACENET_POOL_TYPES:
            raise ValueError(f"global_pool must be one of {MOBILEFACENET_POOL_TYPES}, got {global_pool!r}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 returns the embedding), got {num_classes}")
        if embedding_size < 1 or in_chans < 1:
            raise ValueError(f"embedding_size and in_chans must be positive, got {embedding_size} and {in_chans}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")

    def _init_head(
        self, in_channels: int, embedding_size: int, global_pool: str, num_classes: int, drop_rate: float
    ) -> None:
        """Build the layers after the trunk (``img_size``, ``feature_map_size`` and ``num_classes`` are set)."""
        self.conv_head = ConvBnPReLU(in_channels, _HEAD_CHANNELS, kernel_size=1)
        self.feature_info.append(dict(num_chs=_HEAD_CHANNELS, reduction=2**_NUM_HALVINGS, module="conv_head"))
        self.global_pool = global_pool
        self.pool = self._make_pool(global_pool)
        # The paper's "linear 1x1 conv" acts on a 1x1 map, i.e. a bias-free Linear layer on the pooled vector.
        self.embedding = nn.Linear(_HEAD_CHANNELS, embedding_size, bias=False)
        self.embedding_norm = nn.BatchNorm1d(embedding_size)
        self.num_features = self.head_hidden_size = embedding_size
        self.head_drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(embedding_size, num_classes) if num_classes > 0 else nn.Identity()

    def _make_pool(self, global_pool: str, **device_dtype: Any) -> nn.Module:
        if global_pool == "gdc":
            return ConvBnPReLU(
                _HEAD_CHANNELS,
                _HEAD_CHANNELS,
                kernel_size=self.feature_map_size,
                padding=0,
                groups=_HEAD_CHANNELS,
                activation=False,
            ).to(**device_dtype)
        return nn.AdaptiveAvgPool2d(1)

    def init_weights(self) -> None:
        """Kaiming-normal (fan-out) convolutions, BN scale 1 / shift 0; Linear layers keep PyTorch's default."""
        self.apply(_init_weights)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm's layer-wise learning-rate decay."""
        return dict(
            stem=r"^stem",
            blocks=[(r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)", None), (r"^conv_head", (99999,))],
        )

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The Linear classifier (``nn.Identity`` when ``num_classes == 0``)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a freshly initialised one of ``num_classes`` outputs (0 removes it).

        Args:
            num_classes: New classifier width; 0 makes the model return the embedding.
            global_pool: ``"gdc"`` or ``"avg"`` to rebuild the pooling too (a new GDC is freshly initialised);
                ``None`` keeps the current pooling and its weights.
        """
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 returns the embedding), got {num_classes}")
        device_dtype = module_device_dtype(self)
        if global_pool is not None and global_pool != self.global_pool:
            if global_pool not in MOBILEFACENET_POOL_TYPES:
                raise ValueError(f"global_pool must be one of {MOBILEFACENET_POOL_TYPES}, got {global_pool!r}")
            self.global_pool = global_pool
            self.pool = self._make_pool(global_pool, **device_dtype)
            self.pool.apply(_init_weights)
            self.pool.train(self.training)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes, **device_dtype) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch ``(N, in_chans, H, W)`` -> map ``(N, 512, ceil(H/16), ceil(W/16))``."""
        x = self.stem_dw(self.stem(x))
        return self.conv_head(self.stages(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (GDC or mean), project to the embedding, apply dropout and (unless ``pre_logits``) the classifier."""
        # Checked eagerly only: an ONNX trace fixes the input size anyway.
        if self.global_pool == "gdc" and not torch.jit.is_tracing() and tuple(x.shape[-2:]) != self.feature_map_size:
            raise ValueError(
                f"global_pool='gdc' was built for img_size={self.img_size} (a {self.feature_map_size} feature map) "
                f"but got a {(x.shape[-2], x.shape[-1])} map; build with the input's img_size or use global_pool='avg'"
            )
        x = self.pool(x).flatten(1)
        x = self.embedding_norm(self.embedding(x))
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class MobileFaceNet(GDCFaceNet):
    """MobileFaceNet from "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification on Mobile Devices".

    Chen et al., CCBR 2018 (arXiv:1804.07573). ``forward_features`` returns the ``(N, 512, ceil(H/16), ceil(W/16))``
    map after the 1x1 convolution; the head pools it, projects it to ``embedding_size`` with the linear 1x1 convolution
    (a bias-free Linear on the pooled vector) + BN, applies dropout and, if ``num_classes > 0``, a Linear classifier.
    ``num_features`` is ``embedding_size``: what ``num_classes=0`` returns.

    Pooling: ``global_pool="gdc"`` (the paper's global depthwise convolution) has a kernel equal to the feature map,
    so it is built for one input size: ``img_size`` (default 112 -> 7x7 kernel; 96 -> 6x6, 128 -> 8x8; other sizes
    raise a ``ValueError`` naming the expected one). ``global_pool="avg"`` replaces the GDC by a spatial mean and
    accepts any input size.

    ``embedding_size`` defaults to the paper's 128: the model then has 1.003M parameters (0.996M in convolution,
    Linear and BN layers plus 7.5K PReLU slopes) against the paper's reported 0.99M, and 221.0M multiply-adds at
    112x112 as in the paper. insightface's MobileFaceNet recipes use a 512-d embedding (``embedding_size=512``, 1.2M
    parameters); 128 is kept as the default because it is the published architecture.

    Weights are initialised with timm's MobileNet convention: convolutions Kaiming-normal (fan-out), BN scale 1 and
    shift 0, PReLU slopes 0.25, Linear layers with PyTorch's default.

    Args:
        num_classes: Width of the Linear classifier; 0 returns the ``embedding_size``-d embedding.
        in_chans: Input image channels.
        embedding_size: Width of the embedding (the linear 1x1 convolution after the GDC).
        global_pool: ``"gdc"`` or ``"avg"`` (see above).
        img_size: ``(height, width)`` or side of the input; sizes the GDC kernel.
        drop_rate: Dropout probability before the classifier.

    Example:
        >>> model = MobileFaceNet()
        >>> model(torch.zeros(2, 3, 112, 112)).shape
        torch.Size([2, 128])
        >>> MobileFaceNet(img_size=96)(torch.zeros(2, 3, 96, 96)).shape
        torch.Size([2, 128])
    """

    def __init__(
        self,
        num_classes: int = 0,
        in_chans: int = 3,
        embedding_size: int = 128,
        global_pool: str = "gdc",
        img_size: int | tuple[int, int] = 112,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self._check_arguments(num_classes, in_chans, embedding_size, global_pool, drop_rate)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.img_size = to_size_pair(img_size)
        self.feature_map_size = downsampled_size(self.img_size, _NUM_HALVINGS)

        self.stem = ConvBnPReLU(in_chans, _STEM_CHANNELS, kernel_size=3, stride=2)
        self.stem_dw = ConvBnPReLU(_STEM_CHANNELS, _STEM_CHANNELS, kernel_size=3, groups=_STEM_CHANNELS)
        self.feature_info = [dict(num_chs=_STEM_CHANNELS, reduction=2, module="stem_dw")]
        # One stage per resolution: a strided bottleneck row opens a stage, stride-1 rows extend it.
        stages: list[list[nn.Module]] = []
        in_channels = _STEM_CHANNELS
        for expansion, out_channels, repeats, stride in MOBILEFACENET_BOTTLENECKS:
            if stride == 2 or not stages:
                stages.append([])
                # Stage i follows the stem's halving and i + 1 strided rows.
                self.feature_info.append(dict(reduction=2 ** (len(stages) + 1), module=f"stages.{len(stages) - 1}"))
            for repeat in range(repeats):
                stages[-1].append(Bottleneck(in_channels, out_channels, expansion, stride if repeat == 0 else 1))
                in_channels = out_channels
            self.feature_info[-1]["num_chs"] = out_channels
        self.stages = nn.Sequential(*(nn.Sequential(*blocks) for blocks in stages))
        self._init_head(in_channels, embedding_size, global_pool, num_classes, drop_rate)
        self.init_weights()


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # Face crops are aligned 112x112 images normalised as insightface does: (pixel / 255 - 0.5) / 0.5.
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 112, 112),
        "pool_size": (7, 7),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "stem.conv",
        "classifier": "fc",
        "paper_ids": "arXiv:1804.07573",
        "paper_name": "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification on Mobile Devices",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"mobilefacenet": _cfg()})


@register_model
def mobilefacenet(pretrained: bool = False, **kwargs: Any) -> MobileFaceNet:
    """MobileFaceNet (Chen et al. 2018): 128-d embedding, 1.0M parameters, GDC sized for ``img_size`` (112)."""
    # flatten_sequential lets timm's features_only wrapper reach the "stages.N" modules named in feature_info.
    return build_model_with_cfg(
        MobileFaceNet, "mobilefacenet", pretrained, feature_cfg=dict(flatten_sequential=True), **kwargs
    )
