"""dlib's face-recognition ResNet in torch (lightning_margin.backbones.dlib_resnet).

The reference here is dlib's network definition (``anet_type`` of ``dnn_face_recognition_ex.cpp`` / the Python
binding's ``face_recognition.cpp``) rebuilt with functional ops, from dlib's layer rules: convolutions pad only at
stride 1 (``_nr / 2``), pools never, ``add_prev`` zero-pads the smaller tensor at the end of each axis
(``cpu_dlib.cpp`` ``add``). The comparison with dlib itself, on real weights and faces, is in
tests/test_importers_dlib.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import lightning_margin.backbones  # noqa: F401  (registers the models with timm)
from lightning_margin.backbones.dlib_resnet import DlibResNet, zero_padded_add

# dlib's alevel4 .. alevel0: (channels, blocks); every level but the first starts with ares_down.
LEVELS = [(32, 3), (64, 4), (128, 3), (256, 3), (256, 1)]


def _dlib_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return 1 + (size + 2 * padding - kernel) // stride  # dlib's output size for convolutions and pools


def _dlib_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cpu_dlib.cpp add(dest, src1, src2): dest has the larger size on each axis; absent values count as 0."""
    shape = [max(x, y) for x, y in zip(a.shape, b.shape, strict=True)]
    out = np.zeros(shape, dtype=np.float64)
    for n, k, r, c in np.ndindex(*shape):
        for src in (a, b):
            if n < src.shape[0] and k < src.shape[1] and r < src.shape[2] and c < src.shape[3]:
                out[n, k, r, c] += src[n, k, r, c]
    return out


def _reference_forward(model: DlibResNet, x: torch.Tensor) -> torch.Tensor:
    """anet_type rebuilt with F.* ops, taking the parameters in dlib's layer order from the input up."""
    convs = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
    norms = [module for module in model.modules() if isinstance(module, nn.Module) and hasattr(module, "weight")]
    norms = [module for module in norms if module.weight.ndim == 1]
    params = iter(zip(convs, norms, strict=True))

    def con_affine(x, stride):
        conv, norm = next(params)
        padding = conv.kernel_size[0] // 2 if stride == 1 else 0
        x = F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=padding)
        return x * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)

    x = F.max_pool2d(F.relu(con_affine(x, 2)), 3, 2)
    for index, (_, blocks) in enumerate(LEVELS):
        for block in range(blocks):
            down = index > 0 and block == 0
            branch = con_affine(F.relu(con_affine(x, 2 if down else 1)), 1)
            shortcut = F.avg_pool2d(x, 2, 2) if down else x
            x = F.relu(zero_padded_add(branch, shortcut))
    return F.linear(x.mean(dim=(2, 3)), model.embedding.weight)


def test_zero_padded_add_is_dlibs_add():
    rng = np.random.default_rng(0)
    for shape_a, shape_b in [((1, 2, 3, 3), (1, 4, 4, 4)), ((2, 3, 2, 5), (2, 1, 3, 2)), ((1, 2, 2, 2), (1, 2, 2, 2))]:
        a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
        ours = zero_padded_add(torch.from_numpy(a), torch.from_numpy(b)).numpy()
        np.testing.assert_allclose(ours, _dlib_add(a, b), rtol=0, atol=1e-12)


def test_29_convolutions_the_published_parameter_count_and_dlibs_map_sizes():
    model = DlibResNet(norm="affine")
    assert sum(isinstance(module, nn.Conv2d) for module in model.modules()) == 29
    expected, channels = 3 * 32 * 49 + 32 + 2 * 32, 32  # stem conv (with bias) + affine
    for width, blocks in LEVELS:
        for _ in range(blocks):
            expected += channels * width * 9 + width + 2 * width + width * width * 9 + width + 2 * width
            channels = width
    assert sum(p.numel() for p in model.parameters()) == expected + 256 * 128  # + fc_no_bias<128>
    # Map sizes by dlib's rules: the stem, then each ares_down takes max(conv output, pool output).
    side = _dlib_out(_dlib_out(150, 7, 2, 0), 3, 2, 0)
    sides = [side]
    for _ in LEVELS[1:]:
        side = max(_dlib_out(side, 3, 2, 0), _dlib_out(side, 2, 2, 0))
        sides.append(side)
    assert sides == [35, 17, 8, 4, 2]
    seen = []
    for stage in model.stages:
        stage.register_forward_hook(lambda module, args, out: seen.append(out.shape[-1]))
    assert model(torch.zeros(1, 3, 150, 150)).shape == (1, 128)
    assert seen == sides


@pytest.mark.parametrize("size", [150, 112])
def test_the_forward_pass_is_dlibs_network(size):
    model = DlibResNet(norm="affine").eval()
    with torch.no_grad():  # non-trivial scales and shifts, so that every affine layer matters
        for module in model.modules():
            if hasattr(module, "weight") and module.weight.ndim == 1:
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        x = torch.randn(2, 3, size, size)
        torch.testing.assert_close(model(x), _reference_forward(model, x), rtol=1e-5, atol=1e-5)


def test_timm_builds_it_with_dlibs_input_convention():
    assert timm.list_models("dlib*") == ["dlib_resnet"]
    model = timm.create_model("dlib_resnet", norm="affine", num_classes=10)
    cfg = model.pretrained_cfg
    # dlib's input_rgb_image_sized: (pixel - (122.782, 117.001, 104.298)) / 256; timm's mean/std are in [0, 1] units.
    assert cfg["input_size"] == (3, 150, 150)
    assert cfg["mean"] == pytest.approx((122.782 / 255, 117.001 / 255, 104.298 / 255))
    assert cfg["std"] == pytest.approx((256 / 255,) * 3)
    assert model(torch.zeros(2, 3, 150, 150)).shape == (2, 10)
    assert model.forward_head(model.forward_features(torch.zeros(2, 3, 150, 150)), pre_logits=True).shape == (2, 128)
    model.reset_classifier(0)
    assert model(torch.zeros(1, 3, 150, 150)).shape == (1, 128)
    trainable = timm.create_model("dlib_resnet")
    assert sum(isinstance(module, nn.BatchNorm2d) for module in trainable.modules()) == 29
    with pytest.raises(ValueError, match="`norm` must be one of 'affine', 'batchnorm'; got 'layer'"):
        DlibResNet(norm="layer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="global_pool must be None or 'avg'"):
        model.reset_classifier(5, global_pool="max")
