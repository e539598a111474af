"""Tests for the timm-registered face backbones (IResNet, MobileFaceNet).

Expected shapes, parameter counts and multiply-adds are derived here from the papers' layer tables, independently of
the implementation; forward passes use iresnet18 / mobilefacenet with batch 2, larger models are only built on the
meta device.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import lightning_margin.backbones  # noqa: F401  (registers the models with timm)
from lightning_margin.backbones import MBF, Bottleneck, IRBlock, IResNet, MobileFaceNet

IRESNET_NAMES = ["iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200"]
# Units per stage as published by insightface (arcface_torch/backbones/iresnet.py).
PUBLISHED_LAYERS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3), "iresnet50": (3, 4, 14, 3),
                    "iresnet100": (3, 13, 30, 3), "iresnet200": (6, 26, 60, 6)}  # fmt: skip
# AdaFace's net.py: name -> (units per stage, squeeze-and-excitation); IR-101 has insightface's 100-layer stages.
ADAFACE_NETS = {"ir_18": ((2, 2, 2, 2), False), "ir_34": ((3, 4, 6, 3), False), "ir_50": ((3, 4, 14, 3), False),
                "ir_101": ((3, 13, 30, 3), False), "ir_se_50": ((3, 4, 14, 3), True)}  # fmt: skip
# MobileFaceNet paper, Table 1: bottleneck rows (expansion t, channels c, repeats n, stride s).
PAPER_BOTTLENECKS = [(2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)]


def _count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _map_side(side: int) -> int:
    # Four stride-2 convs with "same" padding: each maps n to floor((n + 2 - 3) / 2) + 1.
    for _ in range(4):
        side = (side + 2 - 3) // 2 + 1
    return side


def _iresnet_params(layers: tuple[int, ...], fc_in_cells: int, embedding_size: int) -> int:
    """IResNet parameters with ArcFace's option-E Linear (map cells * 512 -> embedding_size), from the layer list."""
    channels = (64, 128, 256, 512)
    total = 3 * 64 * 3 * 3 + 2 * 64 + 64  # stem: conv3x3, BN (scale + shift), PReLU (one slope per channel)
    c_in = 64
    for depth, c_out in zip(layers, channels, strict=True):
        for unit in range(depth):
            total += 2 * c_in + c_in * c_out * 9 + 2 * c_out + c_out + c_out * c_out * 9 + 2 * c_out
            if unit == 0:  # stride 2: 1x1 conv + BN shortcut
                total += c_in * c_out + 2 * c_out
            c_in = c_out
    total += 2 * 512  # final BN2d
    return total + 512 * fc_in_cells * embedding_size + embedding_size


def _conv_bn(c_in: int, c_out: int, kernel_cells: int, depthwise: bool = False, prelu: bool = True) -> int:
    weights = c_out * kernel_cells * (1 if depthwise else c_in)
    return weights + 2 * c_out + (c_out if prelu else 0)


def _mobilefacenet_params(embedding_size: int) -> int:
    total = _conv_bn(3, 64, 9) + _conv_bn(64, 64, 9, depthwise=True)
    c_in = 64
    for expansion, c_out, repeats, _ in PAPER_BOTTLENECKS:
        for _ in range(repeats):
            hidden = c_in * expansion
            total += _conv_bn(c_in, hidden, 1) + _conv_bn(hidden, hidden, 9, depthwise=True)
            total += _conv_bn(hidden, c_out, 1, prelu=False)
            c_in = c_out
    total += _conv_bn(c_in, 512, 1) + _conv_bn(512, 512, 49, depthwise=True, prelu=False)  # 1x1 conv, linear GDC 7x7
    return total + 512 * embedding_size + 2 * embedding_size  # linear 1x1 conv (no bias) + BN


def _mobilefacenet_madds(side: int = 112) -> int:
    side //= 2
    total = side * side * 64 * 3 * 9 + side * side * 64 * 9
    c_in = 64
    for expansion, c_out, repeats, stride in PAPER_BOTTLENECKS:
        for repeat in range(repeats):
            hidden = c_in * expansion
            total += side * side * c_in * hidden
            side //= stride if repeat == 0 else 1
            total += side * side * hidden * 9 + side * side * hidden * c_out
            c_in = c_out
    return total + side * side * c_in * 512 + 512 * side * side + 512 * 128


# ---------------------------------------------------------------------------------------------------------- registry


def test_models_are_registered_in_timm() -> None:
    assert timm.list_models("iresnet*") == IRESNET_NAMES
    assert timm.list_models("mobilefacenet*") == ["mobilefacenet"]
    assert timm.list_models("mbf*") == ["mbf", "mbf_large"]
    assert set(timm.list_models(module="iresnet")) == set(IRESNET_NAMES) | set(ADAFACE_NETS)
    assert not timm.list_models("iresnet*", pretrained=True)  # no weights are advertised
    for name in [*IRESNET_NAMES, *ADAFACE_NETS, "mobilefacenet", "mbf", "mbf_large"]:
        config = timm.get_pretrained_cfg(name)
        assert config.input_size == (3, 112, 112) and config.mean == (0.5, 0.5, 0.5)


def test_create_model_builds_the_registered_architecture() -> None:
    with torch.device("meta"):
        for name in IRESNET_NAMES:
            model = timm.create_model(name, num_classes=0)
            assert isinstance(model, IResNet) and model.num_classes == 0 and model.num_features == 512
            assert tuple(len(getattr(model, f"layer{i}")) for i in range(1, 5)) == PUBLISHED_LAYERS[name]
        model = timm.create_model("mobilefacenet", num_classes=0)
        assert isinstance(model, MobileFaceNet) and model.num_features == 128


def test_data_config_matches_insightface_preprocessing() -> None:
    model = timm.create_model("mobilefacenet")
    config = timm.data.resolve_model_data_config(model)
    assert config["input_size"] == (3, 112, 112)
    assert config["mean"] == (0.5, 0.5, 0.5) and config["std"] == (0.5, 0.5, 0.5)


def test_pretrained_true_raises_a_clear_error() -> None:
    for name in ("iresnet18", "mobilefacenet"):
        with pytest.raises(RuntimeError, match=f"No pretrained weights exist for {name}"):
            timm.create_model(name, pretrained=True)


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "message"),
    [
        ("iresnet51", {}, RuntimeError, "Unknown model"),
        ("iresnet18", {"global_pool": "max"}, ValueError, r"global_pool must be one of \('avg', 'flatten', ''\)"),
        ("iresnet18", {"global_pool": "", "num_classes": 10}, ValueError, "cannot feed a classifier"),
        ("iresnet18", {"num_classes": -1}, ValueError, "num_classes must be >= 0"),
        ("iresnet18", {"in_chans": 0}, ValueError, "in_chans and stem_channels must be positive"),
        ("iresnet18", {"drop_rate": 1.0}, ValueError, r"drop_rate must be in \[0, 1\)"),
        ("iresnet18", {"img_size": (112, 0)}, ValueError, "img_size must be a positive int"),
        ("iresnet18", {"layers": (2, 2, 2)}, TypeError, "multiple values"),  # layers is fixed by the name
        ("mobilefacenet", {"global_pool": "flatten"}, ValueError, r"global_pool must be one of \('gdc', 'avg'\)"),
        ("mobilefacenet", {"embedding_size": 0}, ValueError, "embedding_size and in_chans must be positive"),
    ],
)
def test_bad_names_and_arguments_raise(name: str, kwargs: dict, error: type[Exception], message: str) -> None:
    with torch.device("meta"), pytest.raises(error, match=message):
        timm.create_model(name, **kwargs)


def test_iresnet_rejects_bad_layer_lists() -> None:
    with pytest.raises(ValueError, match="layers must be 4 positive ints"):
        IResNet(layers=(2, 2, 0, 2))
    with pytest.raises(ValueError, match="channels must be 4 positive ints"):
        IResNet(layers=(1, 1, 1, 1), channels=(8, 8, 8))


# --------------------------------------------------------------------------------------------- parameters, MAdds


@pytest.mark.parametrize("name", IRESNET_NAMES)
def test_iresnet_parameter_count_matches_the_layer_definition(name: str) -> None:
    with torch.device("meta"):
        option_e = timm.create_model(name, global_pool="flatten", num_classes=512)
        pooled = timm.create_model(name, num_classes=0)
    assert _count(option_e) == _iresnet_params(PUBLISHED_LAYERS[name], fc_in_cells=7 * 7, embedding_size=512)
    assert _count(option_e) - _count(pooled) == 25088 * 512 + 512  # the FC after flattening the 512x7x7 map


@pytest.mark.parametrize("name", list(ADAFACE_NETS))
def test_adaface_nets_are_iresnets_with_a_pooling_first_shortcut(name: str) -> None:
    units, se = ADAFACE_NETS[name]
    depth = {18: "iresnet18", 34: "iresnet34", 50: "iresnet50", 101: "iresnet100"}[int(name.rsplit("_", 1)[1])]
    with torch.device("meta"):
        model = timm.create_model(name, global_pool="flatten", num_classes=512)
        insightface = timm.create_model(depth, global_pool="flatten", num_classes=512)
    assert tuple(len(getattr(model, f"layer{i}")) for i in range(1, 5)) == units
    assert isinstance(model.layer1[0].downsample, nn.MaxPool2d) and model.layer1[0].downsample.stride == 2
    assert isinstance(model.layer2[0].downsample, nn.Sequential)  # widths change there: a 1x1 conv as in insightface
    # The pooled shortcut saves insightface's 1x1 conv (64 * 64) and its BN (2 * 64); SE adds two 1x1 convs per unit.
    widths = [width for width, count in zip((64, 128, 256, 512), units, strict=True) for _ in range(count)]
    se_params = sum(2 * width * (width // 16) for width in widths) if se else 0
    assert _count(model) == _count(insightface) - 64 * 64 - 2 * 64 + se_params


def _mbf_params(blocks: tuple[int, ...], scale: int, embedding_size: int = 512) -> int:
    """insightface's mbf from its layer list (see tests/source_nets.py), counted by hand."""

    def unit(c_in: int, c_out: int, width: int) -> int:  # DepthWise: 1x1 in->width, 3x3 depthwise, 1x1 width->out
        expand, project = _conv_bn(c_in, width, 1), _conv_bn(width, c_out, 1, prelu=False)
        return expand + _conv_bn(width, width, 9, depthwise=True) + project

    wide, narrow = 128 * scale, 64 * scale
    total = _conv_bn(3, narrow, 9)
    # The 3x3 conv in 64 groups: each output channel sees narrow / 64 input channels.
    total += narrow * (narrow // 64) * 9 + 3 * narrow if blocks[0] == 1 else blocks[0] * unit(narrow, narrow, 128)
    total += unit(narrow, narrow, 128) + blocks[1] * unit(narrow, narrow, 128)
    total += unit(narrow, wide, 256) + blocks[2] * unit(wide, wide, 256)
    total += unit(wide, wide, 512) + blocks[3] * unit(wide, wide, 256)
    total += _conv_bn(wide, 512, 1) + _conv_bn(512, 512, 49, depthwise=True, prelu=False)
    return total + 512 * embedding_size + 2 * embedding_size


@pytest.mark.parametrize(("name", "blocks", "scale"), [("mbf", (1, 4, 6, 2), 2), ("mbf_large", (2, 8, 12, 4), 4)])
def test_insightface_mbf_parameter_count_matches_its_layer_list(name: str, blocks: tuple[int, ...], scale: int) -> None:
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=0)
    assert isinstance(model, MBF) and model.num_features == 512
    assert _count(model) == _mbf_params(blocks, scale)
    if name == "mbf":
        assert round(_count(model) / 1e6, 2) == 2.06  # what insightface's mbf has (and our mobilefacenet does not)


def test_iresnet50_matches_insightface_published_size() -> None:
    # insightface's iresnet50 = this trunk + Linear(25088, 512) + BatchNorm1d(512) (2 * 512 parameters): 43.6M.
    with torch.device("meta"):
        option_e = timm.create_model("iresnet50", global_pool="flatten", num_classes=512)
    assert round((_count(option_e) + 2 * 512) / 1e6, 1) == 43.6


@pytest.mark.parametrize("embedding_size", [128, 512])
def test_mobilefacenet_parameter_count_matches_the_paper_table(embedding_size: int) -> None:
    model = MobileFaceNet(embedding_size=embedding_size)
    assert _count(model) == _mobilefacenet_params(embedding_size)


def test_mobilefacenet_size_and_cost_match_the_paper() -> None:
    # The paper reports 0.99M parameters and 221M multiply-adds for 112x112 input and a 128-d embedding.
    # Conv/Linear weights + BN give 0.996M; the 7.5K PReLU slopes bring the total to 1.003M, within 1.5% of 0.99M.
    with torch.device("meta"):  # multiply-adds follow from shapes alone, so no arithmetic is needed
        model = MobileFaceNet().eval()
    assert abs(_count(model) - 0.99e6) / 0.99e6 < 0.015
    madds = []

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kernel_cells = module.kernel_size[0] * module.kernel_size[1]
            madds.append(output[0].numel() * module.in_channels // module.groups * kernel_cells)
        else:
            madds.append(module.in_features * module.out_features)

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(record)
    assert model(torch.zeros(1, 3, 112, 112, device="meta")).shape == (1, 128)
    assert sum(madds) == _mobilefacenet_madds(112)
    assert round(sum(madds) / 1e6) == 221


# ------------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [(112, 112), (96, 96), (128, 128), (128, 100)])
def test_iresnet18_output_shapes_for_several_input_sizes(size: tuple[int, int]) -> None:
    # Shapes only, so the forward runs on the meta device (no arithmetic); values are checked below.
    cells = (_map_side(size[0]), _map_side(size[1]))
    with torch.device("meta"):
        images = torch.empty(2, 3, *size)
        pooled = timm.create_model("iresnet18", num_classes=0)
        flattened = timm.create_model("iresnet18", num_classes=0, global_pool="flatten")
        assert pooled.forward_features(images).shape == (2, 512, *cells)
        assert pooled(images).shape == (2, 512)
        assert flattened(images).shape == (2, 512 * cells[0] * cells[1])


def test_iresnet18_avg_and_flatten_pooling_values() -> None:
    model = timm.create_model("iresnet18", num_classes=0).eval()
    with torch.no_grad():
        feature_map = model.forward_features(torch.randn(2, 3, 32, 32))
        pooled = model.forward_head(feature_map)
        model.reset_classifier(0, global_pool="flatten")
        flattened = model.forward_head(feature_map)
    assert feature_map.shape == (2, 512, 2, 2)
    torch.testing.assert_close(pooled, feature_map.mean(dim=(2, 3)))
    torch.testing.assert_close(flattened, feature_map.reshape(2, -1))


def test_iresnet_flatten_classifier_is_sized_for_img_size() -> None:
    model = timm.create_model("iresnet18", global_pool="flatten", num_classes=10, img_size=32).eval()
    assert model.get_classifier().in_features == 512 * 2 * 2 == model.head_hidden_size
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"img_size=\(32, 32\)"):
        model.forward_head(torch.randn(2, 512, 3, 3))


def test_iresnet_no_pooling_returns_the_map_and_in_chans_is_honoured() -> None:
    model = timm.create_model("iresnet18", global_pool="", in_chans=1).eval()
    assert model.conv1.weight.shape[1] == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 40, 40)).shape == (2, 512, 3, 3)


@pytest.mark.parametrize("size", [(112, 112), (96, 96), (128, 128), (128, 100)])
def test_mobilefacenet_gdc_shapes_for_several_input_sizes(size: tuple[int, int]) -> None:
    cells = (_map_side(size[0]), _map_side(size[1]))
    with torch.device("meta"):
        model = timm.create_model("mobilefacenet", num_classes=0, img_size=size)
        images = torch.empty(2, 3, *size)
        assert model.pool.conv.kernel_size == cells  # the GDC covers the whole map
        assert model.forward_features(images).shape == (2, 512, *cells)
        assert model(images).shape == (2, 128)


def test_mobilefacenet_gdc_rejects_other_sizes_and_avg_accepts_any() -> None:
    model = timm.create_model("mobilefacenet", num_classes=0).eval()
    with pytest.raises(ValueError, match=r"built for img_size=\(112, 112\).*global_pool='avg'"):
        model.forward_head(torch.randn(2, 512, 6, 6))
    averaged = timm.create_model("mobilefacenet", num_classes=0, global_pool="avg").eval()
    with torch.no_grad():
        feature_map = averaged.forward_features(torch.randn(2, 3, 32, 32))
        embedding = averaged.forward_head(feature_map)
        # Independent formula: spatial mean -> bias-free Linear -> BatchNorm1d in eval mode.
        projected = feature_map.mean(dim=(2, 3)) @ averaged.embedding.weight.T
        norm = averaged.embedding_norm
        expected = (projected - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias
    assert feature_map.shape == (2, 512, 2, 2)
    torch.testing.assert_close(embedding, expected)


def test_features_only_reports_every_stage() -> None:
    images = torch.randn(2, 3, 32, 32)
    extractor = timm.create_model("iresnet18", features_only=True).eval()
    with torch.no_grad():
        shapes = [tuple(feature.shape[1:]) for feature in extractor(images)]
    assert shapes == [(64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    extractor = timm.create_model("mobilefacenet", features_only=True).eval()
    with torch.no_grad():
        shapes = [tuple(feature.shape[1:]) for feature in extractor(images)]
    assert shapes == [(64, 16, 16), (64, 8, 8), (128, 4, 4), (128, 2, 2), (512, 2, 2)]


# ------------------------------------------------------------------------------------------------ block structure


def _batch_norm(x: torch.Tensor, norm: nn.BatchNorm2d) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return (x - norm.running_mean.view(shape)) * scale.view(shape) + norm.bias.view(shape)


def _randomise_norms(module: nn.Module) -> None:
    # Non-trivial statistics so that a BN in the wrong place changes the output.
    for norm in module.modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            norm.weight.data.uniform_(0.5, 1.5)
            norm.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize(("in_channels", "out_channels", "stride"), [(8, 16, 2), (16, 16, 1)])
def test_ir_block_is_bn_conv_bn_prelu_conv_bn_with_stride_on_the_second_conv(
    in_channels: int, out_channels: int, stride: int
) -> None:
    block = IRBlock(in_channels, out_channels, stride=stride).eval()
    _randomise_norms(block)
    x = torch.randn(2, in_channels, 10, 10)
    out = F.conv2d(_batch_norm(x, block.bn1), block.conv1.weight, padding=1)
    out = F.prelu(_batch_norm(out, block.bn2), block.act.weight)
    out = _batch_norm(F.conv2d(out, block.conv2.weight, stride=stride, padding=1), block.bn3)
    if stride == 1:
        shortcut = x
    else:
        shortcut = _batch_norm(F.conv2d(x, block.downsample[0].weight, stride=stride), block.downsample[1])
    with torch.no_grad():
        torch.testing.assert_close(block(x), out + shortcut)


def test_ir_block_pool_shortcut_keeps_every_other_pixel_and_se_gates_the_branch() -> None:
    """AdaFace's unit: MaxPool2d(1, 2) is subsampling; SE scales each channel by sigmoid(W2 relu(W1 mean(x)))."""
    block = IRBlock(16, 16, stride=2, shortcut="pool", se_reduction=4).eval()
    _randomise_norms(block)
    x = torch.randn(2, 16, 10, 10)
    out = F.conv2d(_batch_norm(x, block.bn1), block.conv1.weight, padding=1)
    out = F.prelu(_batch_norm(out, block.bn2), block.act.weight)
    out = _batch_norm(F.conv2d(out, block.conv2.weight, stride=2, padding=1), block.bn3)
    squeezed = out.mean(dim=(2, 3))
    gate = torch.sigmoid(F.relu(squeezed @ block.se.fc1.weight[:, :, 0, 0].T) @ block.se.fc2.weight[:, :, 0, 0].T)
    with torch.no_grad():
        torch.testing.assert_close(block(x), out * gate[:, :, None, None] + x[:, :, ::2, ::2])
    assert not list(block.downsample.parameters())
    with pytest.raises(ValueError, match=r"shortcut must be one of \('conv', 'pool'\)"):
        IRBlock(16, 16, stride=2, shortcut="avg")


@pytest.mark.parametrize(("in_channels", "out_channels", "stride"), [(8, 16, 2), (16, 16, 1)])
def test_bottleneck_is_an_inverted_residual_with_linear_projection(
    in_channels: int, out_channels: int, stride: int
) -> None:
    block = Bottleneck(in_channels, out_channels, expansion=2, stride=stride).eval()
    _randomise_norms(block)
    x = torch.randn(2, in_channels, 10, 10)
    hidden = F.prelu(_batch_norm(F.conv2d(x, block.expand.conv.weight), block.expand.bn), block.expand.act.weight)
    depthwise = F.conv2d(hidden, block.depthwise.conv.weight, stride=stride, padding=1, groups=2 * in_channels)
    hidden = F.prelu(_batch_norm(depthwise, block.depthwise.bn), block.depthwise.act.weight)
    out = _batch_norm(F.conv2d(hidden, block.project.conv.weight), block.project.bn)
    with torch.no_grad():
        torch.testing.assert_close(block(x), out + x if stride == 1 else out)


# --------------------------------------------------------------------------------------- gradients and the head


@pytest.mark.parametrize(("name", "side"), [("iresnet18", 32), ("mobilefacenet", 32)])
def test_gradients_reach_every_parameter_and_the_input(name: str, side: int) -> None:
    model = timm.create_model(name, num_classes=5, img_size=side).train()
    images = torch.randn(2, 3, side, side, requires_grad=True)
    F.cross_entropy(model(images), torch.tensor([1, 3])).backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, parameter_name
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    # A narrow IResNet: the mechanism, not the width, is under test.
    model = IResNet(layers=(2, 1, 1, 1), channels=(8, 8, 16, 16), stem_channels=8, num_classes=3).train()
    images = torch.randn(2, 3, 32, 32)
    gradients = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(images).square().sum().backward()
        gradients.append([parameter.grad.clone() for parameter in model.parameters()])
    for plain, checkpointed in zip(*gradients, strict=True):
        torch.testing.assert_close(plain, checkpointed)


def test_iresnet_reset_classifier() -> None:
    model = timm.create_model("iresnet18", num_classes=0).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model(images)
        model.reset_classifier(7)
        classifier = model.get_classifier()
        assert isinstance(classifier, nn.Linear)
        assert (classifier.in_features, classifier.out_features) == (512, 7) and model.num_classes == 7
        torch.testing.assert_close(model(images), features @ classifier.weight.T + classifier.bias)
        model.reset_classifier(3, global_pool="flatten")
        assert model.get_classifier().in_features == 512 * 7 * 7  # sized for the default img_size of 112
        model.reset_classifier(0, global_pool="avg")
        assert isinstance(model.get_classifier(), nn.Identity)
        torch.testing.assert_close(model(images), features)
    model.double().reset_classifier(4)  # the new layer follows the model's dtype
    assert model.get_classifier().weight.dtype == torch.float64
    with pytest.raises(ValueError, match="global_pool must be one of"):
        model.reset_classifier(3, global_pool="max")


def test_mobilefacenet_reset_classifier_and_pooling() -> None:
    model = timm.create_model("mobilefacenet", num_classes=0, img_size=32).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        embedding = model(images)
        model.reset_classifier(5)
        classifier = model.get_classifier()
        assert (classifier.in_features, classifier.out_features) == (128, 5)
        torch.testing.assert_close(model(images), embedding @ classifier.weight.T + classifier.bias)
        model.reset_classifier(0, global_pool="avg")
        assert isinstance(model.pool, nn.AdaptiveAvgPool2d)
        assert model.forward_head(torch.randn(2, 512, 3, 3)).shape == (2, 128)
        model.reset_classifier(0, global_pool="gdc")  # a fresh GDC sized for img_size=32
        assert model.pool.conv.kernel_size == (2, 2) and bool((model.pool.bn.weight == 1).all())


def test_drop_rate_applies_dropout_before_the_classifier_in_training_only() -> None:
    model = timm.create_model("mobilefacenet", num_classes=0, drop_rate=0.5, global_pool="avg")
    feature_map = torch.randn(4, 512, 2, 2)
    model.eval()
    with torch.no_grad():
        reference = model.forward_head(feature_map)
        model.head_drop.train()
        dropped = model.forward_head(feature_map)
    zeroed = dropped == 0
    assert 0.3 < zeroed.float().mean() < 0.7
    torch.testing.assert_close(dropped[~zeroed], 2 * reference[~zeroed])  # survivors are scaled by 1 / (1 - p)


def test_head_width_bookkeeping() -> None:
    assert IResNet(layers=(1, 1, 1, 1), global_pool="flatten", img_size=100).head_hidden_size == 512 * 7 * 7
    assert math.prod(MobileFaceNet(img_size=(128, 96)).pool.conv.kernel_size) == 8 * 6
