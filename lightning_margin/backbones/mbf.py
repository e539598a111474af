"""insightface's MobileFaceNets ``mbf`` and ``mbf_large`` (arcface_torch), registered in timm.

insightface's arcface_torch trains MobileFaceNet (Chen et al., 2018) at wider outer widths than the paper: its
``get_mbf`` multiplies the paper's 64/128 channels by ``scale = 2`` and ``get_mbf_large`` by 4 while the hidden
(depthwise) widths of the bottlenecks stay the paper's 128/256/512, and ``mbf_large`` replaces the depthwise stem
convolution by two bottlenecks. The head is the paper's: 1x1 convolution to 512 channels, global depthwise
convolution, bias-free Linear to the 512-d embedding, BatchNorm1d. Their weights therefore do not fit
:class:`~lightning_margin.backbones.MobileFaceNet` (the paper's widths); these models hold them
(:mod:`lightning_margin.importers.insightface` maps the keys).

Importing this module registers ``mbf`` and ``mbf_large`` with timm::

    import timm
    import lightning_margin.backbones  # noqa: F401

    model = timm.create_model("mbf", num_classes=0)  # (N, 3, 112, 112) -> (N, 512), 2.06M parameters
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from lightning_margin.backbones._helpers import downsampled_size, to_size_pair
from lightning_margin.backbones.mobilefacenet import _NUM_HALVINGS, Bottleneck, ConvBnPReLU, GDCFaceNet
from lightning_margin.backbones.mobilefacenet import _cfg as _mobilefacenet_cfg

__all__ = ["MBF", "MBF_VARIANTS", "mbf", "mbf_large"]

#: insightface's variants: name -> (bottleneck repeats (stem, stage 1, stage 2, stage 3), width multiplier ``scale``).
MBF_VARIANTS: dict[str, tuple[tuple[int, int, int, int], int]] = {
    "mbf": ((1, 4, 6, 2), 2),
    "mbf_large": ((2, 8, 12, 4), 4),
}

# The paper's widths, which insightface multiplies by `scale` (outer) or keeps (hidden, groups of the stem conv).
_STEM_WIDTH, _WIDE_WIDTH = 64, 128
_STEM_GROUPS = 64
# Hidden width of each stage's strided bottleneck and of its stride-1 repeats (paper: expansion 2 or 4 of 64/128).
_STAGE_HIDDEN = ((128, 128), (256, 256), (512, 256))
_STEM_HIDDEN = 128


def _init_weights(module: nn.Module) -> None:
    # insightface initialises convolutions and Linear layers Kaiming-normal (fan-out), BN scale 1 and shift 0.
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MBF(GDCFaceNet):
    """insightface's MobileFaceNet ``mbf`` / ``mbf_large`` (arcface_torch ``get_mbf``; Chen et al., CCBR 2018).

    Layout with ``s = scale`` and ``blocks = (b0, b1, b2, b3)``: a 3x3 stride-2 convolution to ``64 s`` channels;
    a 3x3 convolution in 64 groups (``b0 == 1``) or ``b0`` bottlenecks of hidden width 128 (``mbf_large``); then
    three stages, each a strided bottleneck followed by ``b1``/``b2``/``b3`` residual ones, with outer widths
    ``64 s``, ``128 s``, ``128 s`` and hidden widths 128, 256 and 512 (strided) / 256 (repeats); then the
    MobileFaceNet head (:class:`~lightning_margin.backbones.mobilefacenet.GDCFaceNet`). ``mbf`` (``s = 2``) has
    2.06M parameters with a 512-d embedding.

    Args:
        blocks: Bottleneck repeats of the stem and the three stages (insightface's ``blocks``).
        scale: Width multiplier of the outer channels (insightface's ``scale``).
        num_classes: Width of the Linear classifier; 0 returns the embedding.
        in_chans: Input image channels.
        embedding_size: Width of the embedding (insightface's ``num_features``, 512).
        global_pool: ``"gdc"`` (insightface's) or ``"avg"``.
        img_size: ``(height, width)`` or side of the input; sizes the GDC kernel.
        drop_rate: Dropout probability before the classifier.

    Example:
        >>> import torch
        >>> MBF()(torch.zeros(2, 3, 112, 112)).shape
        torch.Size([2, 512])
    """

    def __init__(
        self,
        blocks: Sequence[int] = MBF_VARIANTS["mbf"][0],
        scale: int = MBF_VARIANTS["mbf"][1],
        num_classes: int = 0,
        in_chans: int = 3,
        embedding_size: int = 512,
        global_pool: str = "gdc",
        img_size: int | tuple[int, int] = 112,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        blocks = tuple(blocks)
        if len(blocks) != 4 or not all(isinstance(count, int) and count >= 1 for count in blocks):
            raise ValueError(f"blocks must be 4 ints >= 1 (stem and three stages), got {blocks!r}")
        if not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be an int >= 1, got {scale!r}")
        self._check_arguments(num_classes, in_chans, embedding_size, global_pool, drop_rate)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.img_size = to_size_pair(img_size)
        self.feature_map_size = downsampled_size(self.img_size, _NUM_HALVINGS)

        stem_width, wide = _STEM_WIDTH * scale, _WIDE_WIDTH * scale
        self.stem = ConvBnPReLU(in_chans, stem_width, kernel_size=3, stride=2)
        if blocks[0] == 1:
            self.stem_dw: nn.Module = ConvBnPReLU(stem_width, stem_width, kernel_size=3, groups=_STEM_GROUPS)
        else:
            self.stem_dw = nn.Sequential(
                *(Bottleneck(stem_width, stem_width, 1, hidden_channels=_STEM_HIDDEN) for _ in range(blocks[0]))
            )
        self.feature_info = [dict(num_chs=stem_width, reduction=2, module="stem_dw")]
        stages = []
        in_channels = stem_width
        for index, (out_channels, repeats, (hidden_strided, hidden)) in enumerate(
            zip((stem_width, wide, wide), blocks[1:], _STAGE_HIDDEN, strict=True)
        ):
            units = [Bottleneck(in_channels, out_channels, 1, stride=2, hidden_channels=hidden_strided)]
            units += [Bottleneck(out_channels, out_channels, 1, hidden_channels=hidden) for _ in range(repeats)]
            stages.append(nn.Sequential(*units))
            self.feature_info.append(dict(num_chs=out_channels, reduction=2 ** (index + 2), module=f"stages.{index}"))
            in_channels = out_channels
        self.stages = nn.Sequential(*stages)
        self._init_head(in_channels, embedding_size, global_pool, num_classes, drop_rate)
        self.init_weights()

    def init_weights(self) -> None:
        """insightface's initialisation: Kaiming-normal (fan-out) convolutions and Linear layers, BN scale 1."""
        self.apply(_init_weights)


default_cfgs = generate_default_cfgs(
    {
        name: _mobilefacenet_cfg(origin_url="https://github.com/deepinsight/insightface", pool_size=(7, 7))
        for name in MBF_VARIANTS
    }
)


def _create_mbf(variant: str, pretrained: bool = False, **kwargs: Any) -> MBF:
    blocks, scale = MBF_VARIANTS[variant]
    return build_model_with_cfg(
        MBF, variant, pretrained, blocks=blocks, scale=scale, feature_cfg=dict(flatten_sequential=True), **kwargs
    )


@register_model
def mbf(pretrained: bool = False, **kwargs: Any) -> MBF:
    """insightface's ``mbf`` (arcface_torch): MobileFaceNet at twice the paper's outer widths, 512-d, 2.06M params."""
    return _create_mbf("mbf", pretrained=pretrained, **kwargs)


@register_model
def mbf_large(pretrained: bool = False, **kwargs: Any) -> MBF:
    """insightface's ``mbf_large`` (arcface_torch): four times the outer widths, twice the bottlenecks, 512-d."""
    return _create_mbf("mbf_large", pretrained=pretrained, **kwargs)
