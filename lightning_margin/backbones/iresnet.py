"""IResNet: the improved-residual ResNets of ArcFace (Deng et al., CVPR 2019), registered in timm.

These are insightface's ``iresnet18/34/50/100/200`` face-recognition trunks: a 3x3 stride-1 stem that keeps the full
resolution of a 112x112 aligned face, four stages of "IR" units (BN-Conv3x3-BN-PReLU-Conv3x3-BN, stride on the second
convolution) with 64/128/256/512 channels that each start by halving the map, and a final BatchNorm, so a 112x112
input gives a 512x7x7 feature map.

Importing this module registers the models with timm::

    import timm
    import lightning_margin.backbones  # noqa: F401  (registers iresnet*/mobilefacenet)

    trunk = timm.create_model("iresnet50", num_classes=0)  # (N, 3, H, W) -> (N, 512), any H, W
    option_e = timm.create_model("iresnet50", global_pool="flatten", num_classes=512)  # ArcFace's option-E head

AdaFace (Kim et al., CVPR 2022) trains the same trunk in TreB1eN's layout, registered as ``ir_18``, ``ir_34``,
``ir_50``, ``ir_101`` and ``ir_se_50`` (AdaFace's names): the one unit that halves the map without changing its
width (the first of stage 1) skips through a parameter-free strided pooling (``shortcut="pool"``) instead of a 1x1
convolution, and ``ir_se_50`` adds a squeeze-and-excitation gate to every unit (``se_reduction=16``).

No pretrained weights are published with this package: ``pretrained=True`` raises timm's "No pretrained weights exist"
error unless a checkpoint is supplied through ``pretrained_cfg_overlay=dict(file=...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn
from torch.utils.checkpoint import checkpoint

from lightning_margin.backbones._helpers import downsampled_size, module_device_dtype, to_size_pair

__all__ = [
    "IRESNET_LAYERS",
    "IRESNET_POOL_TYPES",
    "IRBlock",
    "IResNet",
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
]

#: Number of IR units per stage for each registered depth (insightface's published configurations).
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}

#: AdaFace's IR nets (its ``net.py``): name -> (insightface depth with the same units per stage, SE reduction or 0).
#: AdaFace's IR-101 has insightface's 100-layer configuration.
ADAFACE_IR: dict[str, tuple[str, int]] = {
    "ir_18": ("iresnet18", 0),
    "ir_34": ("iresnet34", 0),
    "ir_50": ("iresnet50", 0),
    "ir_101": ("iresnet100", 0),
    "ir_se_50": ("iresnet50", 16),
}

#: Accepted ``global_pool`` values: spatial mean, flatten the whole map (ArcFace option E), or no pooling (timm's "").
IRESNET_POOL_TYPES: tuple[str, ...] = ("avg", "flatten", "")

#: Accepted ``shortcut`` values: how a unit that halves the map at constant width skips (see :class:`IRBlock`).
IRESNET_SHORTCUTS: tuple[str, ...] = ("conv", "pool")


def _check_positive_ints(name: str, values: Sequence[int], length: int) -> tuple[int, ...]:
    values = tuple(values)
    if len(values) != length or not all(isinstance(value, int) and value > 0 for value in values):
        raise ValueError(f"{name} must be {length} positive ints, got {values!r}")
    return values


def _check_head_args(num_classes: int, global_pool: str) -> None:
    if global_pool not in IRESNET_POOL_TYPES:
        raise ValueError(f"global_pool must be one of {IRESNET_POOL_TYPES}, got {global_pool!r}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0 returns features), got {num_classes}")
    if global_pool == "" and num_classes > 0:
        raise ValueError("global_pool='' (no pooling) returns the feature map and cannot feed a classifier; use 0")


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation gate (Hu et al., CVPR 2018) as the IR-SE nets use it: mean-pool, 1x1 conv down by
    ``reduction``, ReLU, 1x1 conv back, sigmoid, scale the map; both convolutions without bias.

    Example:
        >>> gate = SqueezeExcite(32, reduction=16)
        >>> gate(torch.ones(2, 32, 7, 7)).shape
        torch.Size([2, 32, 7, 7])
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))


class IRBlock(nn.Module):
    """Improved residual unit from ArcFace (Deng et al., 2019, Fig. 7): BN-Conv3x3-BN-PReLU-Conv3x3-BN + shortcut.

    The stride sits on the second convolution, so the first one still sees the full-resolution map. The shortcut is a
    strided 1x1 convolution + BN when the width changes, the identity when nothing changes, and, when only the
    resolution halves, a 1x1 convolution + BN (``shortcut="conv"``, insightface) or a parameter-free strided pooling
    that keeps every other pixel (``shortcut="pool"``, AdaFace/TreB1eN's ``MaxPool2d(1, stride)``). Nothing follows
    the sum (the next unit starts with BN). ``se_reduction > 0`` gates the residual branch with
    :class:`SqueezeExcite` after its last BN (the IR-SE nets).

    Args:
        in_channels: Channels of the input map.
        out_channels: Channels of the output map.
        stride: Stride of the second 3x3 convolution and of the shortcut (1 or 2).
        shortcut: ``"conv"`` or ``"pool"``: the shortcut of a unit that halves the map at constant width.
        se_reduction: Channel reduction of the squeeze-and-excitation gate; 0 for none.

    Example:
        >>> block = IRBlock(64, 128, stride=2)
        >>> block(torch.zeros(2, 64, 14, 14)).shape
        torch.Size([2, 128, 7, 7])
        >>> IRBlock(64, 64, stride=2, shortcut="pool").downsample
        MaxPool2d(kernel_size=1, stride=2, padding=0, dilation=1, ceil_mode=False)
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "conv", se_reduction: int = 0
    ) -> None:
        super().__init__()
        if shortcut not in IRESNET_SHORTCUTS:
            raise ValueError(f"shortcut must be one of {IRESNET_SHORTCUTS}, got {shortcut!r}")
        if se_reduction < 0:
            raise ValueError(f"se_reduction must be >= 0 (0: no squeeze-and-excitation), got {se_reduction}")
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.PReLU(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.se: nn.Module = SqueezeExcite(out_channels, se_reduction) if se_reduction else nn.Identity()
        if in_channels == out_channels and stride != 1 and shortcut == "pool":
            self.downsample: nn.Module = nn.MaxPool2d(kernel_size=1, stride=stride)
        elif stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.downsample = nn.Identity()

    def zero_init_last(self) -> None:
        """Zero the last BN scale so that the unit starts as its shortcut (Goyal et al., 2017)."""
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.bn1(x))
        out = self.act(self.bn2(out))
        out = self.se(self.bn3(self.conv2(out)))
        return out + self.downsample(x)


class IResNet(nn.Module):
    """IResNet from "ArcFace: Additive Angular Margin Loss for Deep Face Recognition" (Deng et al., CVPR 2019).

    ``forward_features`` returns the BN-normalised ``(N, num_features, ceil(H/16), ceil(W/16))`` map; the head then
    pools it (``global_pool``), applies dropout (``drop_rate``) and, if ``num_classes > 0``, a Linear layer.

    ``global_pool="avg"`` (timm's default) averages the map, so the model takes any input size and ``num_classes=0``
    gives ``num_features`` (512) values per image. ``global_pool="flatten"`` flattens the whole map, which is the input
    of ArcFace's option-E embedding (BN-Dropout-FC-BN after the last convolution, the first BN being this trunk's
    final ``norm``; ``num_classes=512`` supplies the FC, the last BatchNorm1d is left to the embedding neck): its width,
    ``num_features * ceil(H/16) * ceil(W/16)`` (25088 at 112x112), depends on the input size. With ``num_classes > 0``
    the Linear layer is sized for ``img_size`` and other sizes raise a ``ValueError``; with ``num_classes=0`` any
    size works. ``head_hidden_size`` is the pre-classifier width at ``img_size``. ``global_pool=""`` returns the
    unpooled map (timm's convention).

    Weights are initialised as insightface does: convolutions from N(0, 0.1), BatchNorm scale 1 and shift 0 (every
    convolution is followed by BN, so the conv scale does not matter), PReLU slopes 0.25, Linear layers with PyTorch's
    default. ``zero_init_last=True`` additionally zeroes each unit's last BN scale.

    Args:
        layers: IR units per stage (four stages), e.g. ``(3, 4, 14, 3)`` for IResNet-50.
        num_classes: Width of the Linear output layer; 0 returns the pooled/flattened features.
        in_chans: Input image channels.
        global_pool: ``"avg"``, ``"flatten"`` or ``""`` (see above).
        drop_rate: Dropout probability before the Linear layer (the Dropout of option E).
        img_size: ``(height, width)`` or side of the input, only used to size the Linear layer after ``"flatten"``.
        channels: Output channels of the four stages.
        stem_channels: Output channels of the 3x3 stride-1 stem.
        zero_init_last: Zero the last BN scale of every IR unit at initialisation.
        shortcut: ``"conv"`` (insightface) or ``"pool"`` (AdaFace): the shortcut of the first unit of stage 1,
            which halves the map at constant width (see :class:`IRBlock`).
        se_reduction: Squeeze-and-excitation in every unit with this channel reduction (16 in IR-SE); 0 for none.

    Example:
        >>> model = IResNet(layers=(2, 2, 2, 2))
        >>> model(torch.zeros(2, 3, 112, 112)).shape
        torch.Size([2, 512])
        >>> model.forward_features(torch.zeros(2, 3, 96, 96)).shape
        torch.Size([2, 512, 6, 6])
    """

    def __init__(
        self,
        layers: Sequence[int] = IRESNET_LAYERS["iresnet50"],
        num_classes: int = 0,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        img_size: int | tuple[int, int] = 112,
        channels: Sequence[int] = (64, 128, 256, 512),
        stem_channels: int = 64,
        zero_init_last: bool = False,
        shortcut: str = "conv",
        se_reduction: int = 0,
    ) -> None:
        super().__init__()
        layers = _check_positive_ints("layers", layers, 4)
        channels = _check_positive_ints("channels", channels, 4)
        if in_chans < 1 or stem_channels < 1:
            raise ValueError(f"in_chans and stem_channels must be positive, got {in_chans} and {stem_channels}")
        _check_head_args(num_classes, global_pool)
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.img_size = to_size_pair(img_size)
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(in_chans, stem_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.act1 = nn.PReLU(stem_channels)
        self.feature_info = [dict(num_chs=stem_channels, reduction=1, module="act1")]
        stages = []
        in_channels = stem_channels
        for index, (depth, out_channels) in enumerate(zip(layers, channels, strict=True)):
            units = [IRBlock(in_channels, out_channels, 2, shortcut, se_reduction)]
            units += [IRBlock(out_channels, out_channels, 1, shortcut, se_reduction) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*units))
            self.feature_info.append(dict(num_chs=out_channels, reduction=2 ** (index + 1), module=f"layer{index + 1}"))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        # IR units end without normalisation or activation, so the trunk ends with a BN (insightface's "bn2").
        self.norm = nn.BatchNorm2d(in_channels)
        self.num_features = in_channels

        self.global_pool = global_pool
        self.head_hidden_size = self._pre_logits_width(global_pool)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights(zero_init_last=zero_init_last)

    def _pre_logits_width(self, global_pool: str) -> int:
        if global_pool == "flatten":
            height, width = downsampled_size(self.img_size, 4)
            return self.num_features * height * width
        return self.num_features

    def init_weights(self, zero_init_last: bool = False) -> None:
        """Insightface's initialisation: conv weights ~ N(0, 0.1), BN scale 1 / shift 0, optional zero last BN."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_last:
            for module in self.modules():
                if isinstance(module, IRBlock):
                    module.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm's layer-wise learning-rate decay."""
        return dict(
            stem=r"^conv1|^bn1|^act1",
            blocks=[(r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in the backward pass instead of storing its activations (saves memory)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The Linear output layer (``nn.Identity`` when ``num_classes == 0``)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the output layer with a freshly initialised one of ``num_classes`` outputs (0 removes it).

        Args:
            num_classes: New output width; 0 makes the model return pooled/flattened features.
            global_pool: New pooling (``"avg"``, ``"flatten"`` or ``""``); ``None`` keeps the current one.
        """
        global_pool = self.global_pool if global_pool is None else global_pool
        _check_head_args(num_classes, global_pool)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.head_hidden_size = self._pre_logits_width(global_pool)
        self.fc = (
            nn.Linear(self.head_hidden_size, num_classes, **module_device_dtype(self))
            if num_classes > 0
            else nn.Identity()
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch ``(N, in_chans, H, W)`` -> normalised map ``(N, num_features, ceil(H/16), ceil(W/16))``."""
        x = self.act1(self.bn1(self.conv1(x)))
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            x = self._checkpointed_stages(x)
        else:
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.norm(x)

    @torch.jit.unused
    def _checkpointed_stages(self, x: torch.Tensor) -> torch.Tensor:
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = checkpoint(stage, x, use_reentrant=False)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the feature map, apply dropout and (unless ``pre_logits``) the Linear layer."""
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        elif self.global_pool == "flatten":
            x = x.flatten(1)
            if self.num_classes > 0 and x.shape[1] != self.head_hidden_size:
                raise ValueError(
                    f"global_pool='flatten' with a Linear layer was built for img_size={self.img_size} "
                    f"({self.head_hidden_size} flattened features) but got {x.shape[1]}; rebuild with the input's "
                    "img_size or use global_pool='avg'"
                )
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_iresnet(variant: str, pretrained: bool = False, **kwargs: Any) -> IResNet:
    return build_model_with_cfg(IResNet, variant, pretrained, layers=IRESNET_LAYERS[variant], **kwargs)


def _create_adaface_ir(variant: str, pretrained: bool = False, **kwargs: Any) -> IResNet:
    depth, se_reduction = ADAFACE_IR[variant]
    kwargs = {"shortcut": "pool", "se_reduction": se_reduction, **kwargs}
    return build_model_with_cfg(IResNet, variant, pretrained, layers=IRESNET_LAYERS[depth], **kwargs)


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
        "first_conv": "conv1",
        "classifier": "fc",
        "paper_ids": "arXiv:1801.07698",
        "paper_name": "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
        "origin_url": "https://github.com/deepinsight/insightface",
        **kwargs,
    }


_ADAFACE_CFG = {
    "paper_ids": "arXiv:2204.00964",
    "paper_name": "AdaFace: Quality Adaptive Margin for Face Recognition",
    "origin_url": "https://github.com/mk-minchul/AdaFace",
}
default_cfgs = generate_default_cfgs(
    {**{name: _cfg() for name in IRESNET_LAYERS}, **{name: _cfg(**_ADAFACE_CFG) for name in ADAFACE_IR}}
)


@register_model
def iresnet18(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-18 (ArcFace, Deng et al. 2019): stages of (2, 2, 2, 2) IR units, 24.0M parameters with option E."""
    return _create_iresnet("iresnet18", pretrained=pretrained, **kwargs)


@register_model
def iresnet34(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-34 (ArcFace, Deng et al. 2019): stages of (3, 4, 6, 3) IR units, 34.1M parameters with option E."""
    return _create_iresnet("iresnet34", pretrained=pretrained, **kwargs)


@register_model
def iresnet50(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-50 (ArcFace, Deng et al. 2019): stages of (3, 4, 14, 3) IR units, 43.6M parameters with option E."""
    return _create_iresnet("iresnet50", pretrained=pretrained, **kwargs)


@register_model
def iresnet100(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-100 (ArcFace, Deng et al. 2019): stages of (3, 13, 30, 3) IR units, 65.2M parameters with option E."""
    return _create_iresnet("iresnet100", pretrained=pretrained, **kwargs)


@register_model
def iresnet200(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """IResNet-200 (insightface's arcface_torch ``r200``): stages of (6, 26, 60, 6) IR units, 118.8M parameters
    with option E."""
    return _create_iresnet("iresnet200", pretrained=pretrained, **kwargs)


@register_model
def ir_18(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """AdaFace's IR-18 (Kim et al. 2022): IResNet-18 with a pooling shortcut in the first unit."""
    return _create_adaface_ir("ir_18", pretrained=pretrained, **kwargs)


@register_model
def ir_34(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """AdaFace's IR-34 (Kim et al. 2022): IResNet-34 with a pooling shortcut in the first unit."""
    return _create_adaface_ir("ir_34", pretrained=pretrained, **kwargs)


@register_model
def ir_50(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """AdaFace's IR-50 (Kim et al. 2022): IResNet-50 with a pooling shortcut in the first unit."""
    return _create_adaface_ir("ir_50", pretrained=pretrained, **kwargs)


@register_model
def ir_101(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """AdaFace's IR-101 (Kim et al. 2022): IResNet-100's (3, 13, 30, 3) units, a pooling shortcut in the first."""
    return _create_adaface_ir("ir_101", pretrained=pretrained, **kwargs)


@register_model
def ir_se_50(pretrained: bool = False, **kwargs: Any) -> IResNet:
    """AdaFace's IR-SE-50 (Kim et al. 2022): IR-50 with a squeeze-and-excitation gate (reduction 16) in every unit."""
    return _create_adaface_ir("ir_se_50", pretrained=pretrained, **kwargs)
