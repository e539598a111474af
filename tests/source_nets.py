"""The source networks of the importers, rebuilt for the tests from their published structure, with their key names.

Written here from the structure the projects publish (not from this package's backbones, and not copied):

* insightface arcface_torch ``backbones/iresnet.py``: stem ``conv1``/``bn1``/``prelu``; ``layer1..4`` of
  ``IBasicBlock`` (``bn1``, ``conv1`` 3x3, ``bn2``, ``prelu``, ``conv2`` 3x3 with the stride, ``bn3``, and a
  ``downsample`` = 1x1 conv + BN where the stride or width changes); ``bn2``, dropout, flatten, ``fc``
  (512*7*7 -> 512), ``features`` (BatchNorm1d). Units per stage: r18 (2,2,2,2) ... r200 (6,26,60,6).
* insightface ``backbones/mobilefacenet.py``: ``layers`` = [ConvBlock 3x3/2 to 64s; ConvBlock 3x3 in 64 groups
  (blocks[0] == 1) or a Residual of blocks[0] DepthWise units of width 128; DepthWise(64s->64s, /2, width 128);
  Residual(blocks[1], width 128); DepthWise(64s->128s, /2, width 256); Residual(blocks[2], width 256);
  DepthWise(128s->128s, /2, width 512); Residual(blocks[3], width 256)], ``conv_sep`` ConvBlock 1x1 to 512,
  ``features`` = GDC (LinearBlock 7x7 depthwise, Flatten, Linear without bias, BatchNorm1d). ConvBlock = conv, BN,
  PReLU in ``.layers``; LinearBlock = conv, BN; DepthWise = ConvBlock 1x1 in->width, ConvBlock 3x3 depthwise,
  LinearBlock 1x1 width->out (+ input when residual). mbf: blocks (1,4,6,2), s = 2; mbf_large: (2,8,12,4), s = 4.
* AdaFace ``net.py``: ``input_layer`` (conv 3x3, BN, PReLU), a flat ``body`` of ``BasicBlockIR`` units
  (``shortcut_layer`` = MaxPool2d(1, stride) when the width is unchanged, else 1x1 conv + BN; ``res_layer`` = BN,
  conv 3x3, BN, PReLU, conv 3x3 with the stride, BN, + ``se_block`` (avg-pool, ``fc1`` 1x1 conv, ReLU, ``fc2``,
  sigmoid, no biases, reduction 16) in IR-SE), ``output_layer`` = BN2d, Dropout, Flatten, Linear, BatchNorm1d
  without affine parameters; ``forward`` returns ``(x / |x|, |x|)``. Stages start at widths 64 -> 64 (stride 2).
"""

from __future__ import annotations

import torch
from torch import nn

IRESNET_UNITS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
MBF_SPECS = {"mbf": ((1, 4, 6, 2), 2), "mbf_large": ((2, 8, 12, 4), 4)}
ADAFACE_SPECS = {  # name -> (units per stage, squeeze-and-excitation)
    "ir_18": ((2, 2, 2, 2), False),
    "ir_34": ((3, 4, 6, 3), False),
    "ir_50": ((3, 4, 14, 3), False),
    "ir_101": ((3, 13, 30, 3), False),
    "ir_se_50": ((3, 4, 14, 3), True),
}


# ---- insightface iresnet ------------------------------------------------------------------------------------------


class InsightFaceUnit(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        branch = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return branch + (x if self.downsample is None else self.downsample(x))


class InsightFaceIResNet(nn.Module):
    def __init__(self, units: tuple[int, ...], num_features: int = 512) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for index, (count, planes) in enumerate(zip(units, (64, 128, 256, 512), strict=True)):
            stage = [InsightFaceUnit(inplanes, planes, 2)] + [
                InsightFaceUnit(planes, planes, 1) for _ in range(count - 1)
            ]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


# ---- insightface mobilefacenet --------------------------------------------------------------------------------------


class Conv(nn.Module):
    """ConvBlock (with PReLU) or LinearBlock (without): ``.layers`` = conv, BN[, PReLU]."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, groups=1, prelu=True) -> None:
        super().__init__()
        layers = [nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        self.layers = nn.Sequential(*layers, *([nn.PReLU(cout)] if prelu else []))

    def forward(self, x):
        return self.layers(x)


class DepthWise(nn.Module):
    def __init__(self, cin, cout, width, stride, residual) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            Conv(cin, width, 1),
            Conv(width, width, 3, stride, 1, groups=width),
            Conv(width, cout, 1, prelu=False),
        )

    def forward(self, x):
        return x + self.layers(x) if self.residual else self.layers(x)


class Residual(nn.Module):
    def __init__(self, channels, count, width) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(DepthWise(channels, channels, width, 1, True) for _ in range(count)))

    def forward(self, x):
        return self.layers(x)


class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.shape[0], -1)


class GDC(nn.Module):
    def __init__(self, embedding_size) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            Conv(512, 512, 7, groups=512, prelu=False), Flatten(), nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )  # fmt: skip

    def forward(self, x):
        return self.layers(x)


class InsightFaceMobileFaceNet(nn.Module):
    def __init__(self, blocks=(1, 4, 6, 2), scale=2, num_features=512) -> None:
        super().__init__()
        s = scale
        second = Conv(64 * s, 64 * s, 3, 1, 1, groups=64) if blocks[0] == 1 else Residual(64 * s, blocks[0], 128)
        self.layers = nn.ModuleList(
            [
                Conv(3, 64 * s, 3, 2, 1),
                second,
                DepthWise(64 * s, 64 * s, 128, 2, False),
                Residual(64 * s, blocks[1], 128),
                DepthWise(64 * s, 128 * s, 256, 2, False),
                Residual(128 * s, blocks[2], 256),
                DepthWise(128 * s, 128 * s, 512, 2, False),
                Residual(128 * s, blocks[3], 256),
            ]
        )
        self.conv_sep = Conv(128 * s, 512, 1)
        self.features = GDC(num_features)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))


# ---- AdaFace ------------------------------------------------------------------------------------------------------


class SEModule(nn.Module):
    def __init__(self, channels, reduction=16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BasicBlockIR(nn.Module):
    def __init__(self, cin, depth, stride, se) -> None:
        super().__init__()
        if cin == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, depth, 3, 1, 1, bias=False), nn.BatchNorm2d(depth), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth),
        )  # fmt: skip
        if se:
            self.res_layer.add_module("se_block", SEModule(depth, 16))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class AdaFaceBackbone(nn.Module):
    def __init__(self, units: tuple[int, ...], se: bool) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        body, cin = [], 64
        for count, depth in zip(units, (64, 128, 256, 512), strict=True):
            body += [BasicBlockIR(cin, depth, 2, se)] + [BasicBlockIR(depth, depth, 1, se) for _ in range(count - 1)]
            cin = depth
        self.body = nn.Sequential(*body)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512), nn.Dropout(0.4), Flatten(), nn.Linear(512 * 7 * 7, 512),
            nn.BatchNorm1d(512, affine=False),
        )  # fmt: skip

    def forward(self, x):
        x = self.output_layer(self.body(self.input_layer(x)))
        norm = torch.norm(x, 2, 1, True)
        return torch.div(x, norm), norm


# ---- builders -----------------------------------------------------------------------------------------------------


def build_source(source: str, arch: str) -> nn.Module:
    """The source network ``arch`` of ``source`` (``"insightface"`` or ``"adaface"``), with default init."""
    if source == "insightface":
        if arch in MBF_SPECS:
            blocks, scale = MBF_SPECS[arch]
            return InsightFaceMobileFaceNet(blocks, scale)
        return InsightFaceIResNet(IRESNET_UNITS[arch])
    units, se = ADAFACE_SPECS[arch]
    return AdaFaceBackbone(units, se)


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0, calibration_batches: int = 2) -> nn.Module:
    """Random weights of a trained-looking scale, then BatchNorm statistics measured on random images (so that every
    BN layer in eval mode is far from the identity and activations stay finite through deep nets)."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        if parameter.ndim > 1:
            fan_in = parameter[0].numel()
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * (1.0 / fan_in) ** 0.5)
        elif "prelu" in name or isinstance(_owner(model, name), nn.PReLU):
            parameter.copy_(0.1 + 0.3 * torch.rand(parameter.shape, generator=generator))
        elif name.endswith("weight"):
            parameter.copy_(0.5 + torch.rand(parameter.shape, generator=generator))
        else:
            parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the calibration batches
    model.train()
    for _ in range(calibration_batches):
        model(torch.randn(4, 3, 112, 112, generator=generator))
    return model.eval()


def _owner(model: nn.Module, parameter_name: str) -> nn.Module:
    module = model
    for part in parameter_name.split(".")[:-1]:
        module = getattr(module, part)
    return module
