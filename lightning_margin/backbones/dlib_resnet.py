"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``), registered in timm.

Davis E. King's network behind dlib's ``face_recognition_model_v1`` (dlib's ``dnn_face_recognition_ex.cpp`` and its
Python binding define it; 99.38% on LFW View 2 as published) and the ``face_recognition`` package: a ResNet-34-like
trunk at half the width with 29 convolutions, for 150x150 RGB face chips, ending in a 128-d bias-free fully connected
layer trained with dlib's metric loss. Layer by layer, from the input up:

* a 7x7 stride-2 convolution to 32 channels (no padding), scale-and-shift, ReLU, 3x3 stride-2 max pooling
  (150 -> 72 -> 35);
* five stages of residual blocks (dlib's ``alevel4`` ... ``alevel0``) of 32, 64, 128, 256 and 256 channels with 3, 4,
  3, 3 and 1 blocks; a block is conv3x3 - norm - ReLU - conv3x3 - norm, added to its input, then ReLU. The first block
  of every stage but the first halves the map: its first convolution has stride 2 and no padding, and the shortcut
  is a 2x2 stride-2 average pooling. The two paths can differ in size (a 8x8 map gives a 3x3 block output and a 4x4
  pooled shortcut; 32 shortcut channels meet 64 block channels), and dlib's addition then zero-pads each tensor at
  the end of every axis to the larger size (:func:`zero_padded_add`): 35 -> 17 -> 8 -> 4 -> 2;
* global average pooling (256 values) and a bias-free Linear layer to the 128-d embedding.

dlib trains with batch normalisation (``bn_con``) and runs with ``affine`` layers, a fixed per-channel scale and shift
that the trained statistics fold into; the released file holds those. ``norm="affine"`` builds that inference form
(:class:`ChannelAffine`), ``norm="batchnorm"`` the trainable one. Input: RGB, ``(pixel - channel mean) / 256`` with
dlib's means 122.782, 117.001, 104.298 (dlib's ``input_rgb_image_sized``), which is this model's timm config.

Example:
    >>> import timm
    >>> import lightning_margin.backbones  # noqa: F401  (registers the models with timm)
    >>> model = timm.create_model("dlib_resnet", norm="affine")
    >>> model(torch.zeros(2, 3, 150, 150)).shape
    torch.Size([2, 128])
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from lightning_margin._validation import check_choice
from lightning_margin.backbones._helpers import module_device_dtype

__all__ = [
    "DLIB_EMBEDDING_SIZE",
    "DLIB_INPUT_MEAN",
    "DLIB_INPUT_SCALE",
    "DLIB_INPUT_SIZE",
    "DLIB_RESNET_NORMS",
    "DLIB_RESNET_STAGES",
    "ChannelAffine",
    "DlibResNet",
    "DlibResidualBlock",
    "dlib_resnet",
    "zero_padded_add",
]

#: (channels, blocks) of the five residual stages from the input up: dlib's alevel4, alevel3, alevel2, alevel1, alevel0.
DLIB_RESNET_STAGES: tuple[tuple[int, int], ...] = ((32, 3), (64, 4), (128, 3), (256, 3), (256, 1))
#: The normalisation layers ``DlibResNet`` can be built with.
DLIB_RESNET_NORMS: tuple[str, ...] = ("affine", "batchnorm")
#: Side of the square face chip the network was trained on (dlib's ``input_rgb_image_sized<150>``).
DLIB_INPUT_SIZE = 150
#: dlib's per-channel input means in pixel units (RGB), subtracted before dividing by :data:`DLIB_INPUT_SCALE`.
DLIB_INPUT_MEAN: tuple[float, float, float] = (122.782, 117.001, 104.298)
#: dlib divides the mean-subtracted pixels by 256 (not 255).
DLIB_INPUT_SCALE = 256.0

#: Width of dlib's face descriptor (the bias-free fc layer).
DLIB_EMBEDDING_SIZE = 128

_STEM_CHANNELS = 32


def zero_padded_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum of two ``[N, C, H, W]`` maps of possibly different sizes, each zero-padded at the end of every axis.

    dlib's ``add_prev`` layer: the output has the larger size along each axis, and a tensor contributes zeros where it
    has no values (extra channels, the last rows and columns).

    Example:
        >>> zero_padded_add(torch.ones(1, 1, 1, 2), torch.ones(1, 2, 2, 1))[0]
        tensor([[[2., 1.],
                 [1., 0.]],
        <BLANKLINE>
                [[1., 0.],
                 [1., 0.]]])
    """
    if a.shape == b.shape:
        return a + b
    size = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True)]

    def pad(x: torch.Tensor) -> torch.Tensor:
        channels, height, width = x.shape[1:]
        return F.pad(x, (0, size[2] - width, 0, size[1] - height, 0, size[0] - channels))

    return pad(a) + pad(b)


class ChannelAffine(nn.Module):
    """A per-channel scale and shift, ``x * weight + bias``: dlib's ``affine`` layer (batch norm folded for inference).

    Args:
        num_channels: Channels of the ``[N, C, H, W]`` input.

    Example:
        >>> layer = ChannelAffine(2)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([2.0, -1.0])), layer.bias.copy_(torch.tensor([0.5, 0.0]))
        >>> layer(torch.ones(1, 2, 1, 1)).flatten().tolist()
        [2.5, -1.0]
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _norm(kind: str, channels: int) -> nn.Module:
    return ChannelAffine(channels) if kind == "affine" else nn.BatchNorm2d(channels)


class DlibResidualBlock(nn.Module):
    """dlib's ``ares``/``ares_down`` unit: conv3x3-norm-ReLU-conv3x3-norm, plus the shortcut, then ReLU.

    With ``downsample`` the first convolution has stride 2 and no padding (dlib pads only stride-1 convolutions) and
    the shortcut is 2x2 stride-2 average pooling; the two are added with :func:`zero_padded_add`.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        downsample: Halve the map (the first block of a stage).
        norm: ``"affine"`` or ``"batchnorm"``.

    Example:
        >>> DlibResidualBlock(128, 256, downsample=True)(torch.zeros(1, 128, 8, 8)).shape
        torch.Size([1, 256, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool, norm: str = "affine") -> None:
        super().__init__()
        if not downsample and in_channels != out_channels:
            raise ValueError(f"a block without downsampling keeps its width, got {in_channels} -> {out_channels}")
        stride, padding = (2, 0) if downsample else (1, 1)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=padding)
        self.norm1 = _norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        self.norm2 = _norm(norm, out_channels)
        self.shortcut: nn.Module = nn.AvgPool2d(2, stride=2) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x)))))
        return F.relu(zero_padded_add(out, self.shortcut(x)))


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet: 29 convolutions, 150x150 RGB chips, a 128-d bias-free embedding layer.

    ``forward_features`` returns the last stage's ``[N, 256, 2, 2]`` map (at 150x150); the head averages it, applies
    the bias-free Linear embedding layer, dropout and, if ``num_classes > 0``, a Linear classifier. ``num_features``
    is ``embedding_size``: what ``num_classes=0`` returns (dlib's face descriptor). Any input of at least 103x103 runs
    (the pooling is global); the weights were trained for 150x150.

    Args:
        num_classes: Width of the Linear classifier; 0 returns the embedding.
        in_chans: Input image channels.
        embedding_size: Width of the bias-free embedding layer (dlib: 128).
        norm: ``"affine"`` (dlib's inference layers: the released weights) or ``"batchnorm"`` (for training).
        drop_rate: Dropout probability before the classifier.

    Example:
        >>> model = DlibResNet(norm="affine")
        >>> sum(isinstance(module, nn.Conv2d) for module in model.modules())
        29
        >>> model.forward_features(torch.zeros(1, 3, 150, 150)).shape
        torch.Size([1, 256, 2, 2])
    """

    def __init__(
        self,
        num_classes: int = 0,
        in_chans: int = 3,
        embedding_size: int = DLIB_EMBEDDING_SIZE,
        norm: Literal["affine", "batchnorm"] = "batchnorm",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_choice("norm", norm, DLIB_RESNET_NORMS)
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 returns the embedding), got {num_classes}")
        if embedding_size < 1 or in_chans < 1:
            raise ValueError(f"embedding_size and in_chans must be positive, got {embedding_size} and {in_chans}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.norm = norm
        self.drop_rate = drop_rate

        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(in_chans, _STEM_CHANNELS, 7, stride=2, padding=0))
        self.stem.add_module("norm", _norm(norm, _STEM_CHANNELS))
        self.stem.add_module("act", nn.ReLU())
        self.stem.add_module("pool", nn.MaxPool2d(3, stride=2))
        self.feature_info = [dict(num_chs=_STEM_CHANNELS, reduction=4, module="stem")]
        stages = []
        in_channels = _STEM_CHANNELS
        for index, (channels, depth) in enumerate(DLIB_RESNET_STAGES):
            downsample = index > 0
            blocks = [DlibResidualBlock(in_channels, channels, downsample, norm)]
            blocks += [DlibResidualBlock(channels, channels, False, norm) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=channels, reduction=4 * 2**index, module=f"stages.{index}"))
            in_channels = channels
        self.stages = nn.Sequential(*stages)
        self.embedding = nn.Linear(in_channels, embedding_size, bias=False)
        self.num_features = self.head_hidden_size = embedding_size
        self.head_drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(embedding_size, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Kaiming-normal (fan-out) convolutions, norm scale 1 / shift 0; Linear layers keep PyTorch's default."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, (ChannelAffine, nn.BatchNorm2d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm's layer-wise learning-rate decay."""
        return dict(
            stem=r"^stem",
            blocks=[(r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)", None), (r"^embedding", (99999,))],
        )

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The Linear classifier (``nn.Identity`` when ``num_classes == 0``)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a freshly initialised one of ``num_classes`` outputs (0 removes it).

        Args:
            num_classes: New classifier width; 0 makes the model return the embedding.
            global_pool: Only ``None`` or ``"avg"``: the pooling is dlib's global average.
        """
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool must be None or 'avg' (dlib's global average), got {global_pool!r}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 returns the embedding), got {num_classes}")
        self.num_classes = num_classes
        self.fc = (
            nn.Linear(self.num_features, num_classes, **module_device_dtype(self)) if num_classes > 0 else nn.Identity()
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch ``(N, in_chans, H, W)`` -> the last stage's map (``(N, 256, 2, 2)`` at 150x150)."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average, bias-free embedding layer, dropout and (unless ``pre_logits``) the classifier."""
        x = self.head_drop(self.embedding(x.mean(dim=(2, 3))))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # timm's mean/std are in [0, 1] units: dlib's (pixel - mean) / 256 is mean / 255 and std 256 / 255.
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, DLIB_INPUT_SIZE, DLIB_INPUT_SIZE),
        "pool_size": (2, 2),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": tuple(value / 255.0 for value in DLIB_INPUT_MEAN),
        "std": (DLIB_INPUT_SCALE / 255.0,) * 3,
        "first_conv": "stem.conv",
        "classifier": "fc",
        "license": "cc0-1.0",
        "origin_url": "https://github.com/davisking/dlib-models",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"dlib_resnet": _cfg()})


@register_model
def dlib_resnet(pretrained: bool = False, **kwargs: Any) -> DlibResNet:
    """dlib's face-recognition ResNet: 29 convolutions, 150x150 input, 128-d bias-free embedding, 5.6M parameters."""
    return build_model_with_cfg(
        DlibResNet, "dlib_resnet", pretrained, feature_cfg=dict(flatten_sequential=True), **kwargs
    )
