"""Import dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) as a FaceEmbedder.

``lightning-margin import dlib OUTPUT_DIR [--dat FILE]`` reads dlib's own serialisation in Python
(:mod:`~lightning_margin.importers.dlib_format`, no dlib needed), checks it layer by layer against
:class:`~lightning_margin.backbones.dlib_resnet.DlibResNet` and writes an ordinary embedder folder whose config
records what the network expects: 150x150 RGB face chips, ``(pixel - dlib's channel means) / 256``. Without
``--dat`` the file that ``pip install face-recognition-models`` put on disk is used (found through the package's
installed-file list; the package itself is not imported). Python: ``FaceEmbedder.from_dlib(path=None)``.

The released weights are CC0 (dlib-models, Davis E. King); dlib reports 99.38% on LFW View 2 with them.

Example:
    >>> config, weights = read_dlib_model()  # doctest: +SKIP
    >>> config["input_size"], config["embedding_size"], weights["backbone.embedding.weight"].shape  # doctest: +SKIP
    (150, 128, torch.Size([128, 256]))
"""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_margin.align.dlib_backend import MODELS_DISTRIBUTION, model_file
from lightning_margin.backbones.dlib_resnet import (
    DLIB_EMBEDDING_SIZE,
    DLIB_INPUT_SCALE,
    DLIB_INPUT_SIZE,
    DlibResidualBlock,
    DlibResNet,
)
from lightning_margin.importers.dlib_format import DlibLayer, DlibNet, read_dlib_net
from lightning_margin.importers.registry import ImportedWeights, imported_record, register_importer

__all__ = [
    "DLIB_ALIGNMENT",
    "DLIB_LICENSE",
    "DLIB_MODELS_DISTRIBUTION",
    "DLIB_MODELS_URL",
    "DLIB_RECOGNITION_MODEL",
    "dlib_import",
    "dlib_layer_plan",
    "dlib_state_dict",
    "import_dlib",
    "installed_dlib_model",
    "read_dlib_model",
]

#: The file name of dlib's face-recognition model, as dlib-models and face-recognition-models ship it.
DLIB_RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
#: The distribution (``pip install face-recognition-models``) whose files include the model.
DLIB_MODELS_DISTRIBUTION = MODELS_DISTRIBUTION
#: The alignment the network was trained on: dlib's 150x150 face chip (:mod:`lightning_margin.align.dlib_chip`).
DLIB_ALIGNMENT = "dlib_chip"
#: The released weights' licence and home.
DLIB_LICENSE = (
    "public domain: Davis E. King released dlib's models for anyone to use as they want (dlib-models), and "
    "face-recognition-models ships them under CC0 1.0"
)
DLIB_MODELS_URL = "https://github.com/davisking/dlib-models"


def installed_dlib_model(name: str = DLIB_RECOGNITION_MODEL) -> Path:
    """The path of a model file that ``face-recognition-models`` installed (the detector's rule:
    :func:`lightning_margin.align.dlib_backend.model_file`), with the importer's hint.

    Raises:
        FileNotFoundError: the distribution is not installed, does not list ``name``, or the file is missing.

    Example:
        >>> installed_dlib_model().name  # doctest: +SKIP
        'dlib_face_recognition_resnet_model_v1.dat'
    """
    try:
        return model_file(name)
    except (ImportError, FileNotFoundError) as error:
        raise FileNotFoundError(f"{error}; or pass the file (--dat FILE / path=...)") from None


@dataclass(frozen=True)
class _Planned:
    """A layer the file must hold at this position: dlib's kind, our module (if it has weights), its settings."""

    kind: str
    module: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


def _conv(name: str, conv: nn.Conv2d) -> _Planned:
    (nr, nc), (stride_y, stride_x), padding = conv.kernel_size, conv.stride, conv.padding
    assert isinstance(padding, tuple)  # an int pair for every Conv2d built with int padding
    attributes = {"num_filters": conv.out_channels, "nr": nr, "nc": nc, "stride_y": stride_y, "stride_x": stride_x}
    return _Planned("con", name, attributes | {"padding_y": padding[0], "padding_x": padding[1]})


def _pool(kind: str, pool: nn.MaxPool2d | nn.AvgPool2d) -> _Planned:
    size, stride, padding = (pool.kernel_size, pool.stride, pool.padding)
    assert isinstance(size, int) and isinstance(stride, int) and isinstance(padding, int)
    attributes = {"nr": size, "nc": size, "stride_y": stride, "stride_x": stride}
    return _Planned(kind, None, attributes | {"padding_y": padding, "padding_x": padding})


def dlib_layer_plan(model: DlibResNet) -> list[_Planned]:
    """The layers a dlib file of ``model``'s network holds, from the input up, with the module each one fills.

    Derived from the model's own modules (kernel sizes, strides, padding), so the architecture is stated once.
    """
    plan = [_conv("stem.conv", model.stem.conv), _Planned("affine", "stem.norm"), _Planned("relu")]
    plan.append(_pool("max_pool", model.stem.pool))
    for stage_index, stage in enumerate(model.stages):
        for block_index, block in enumerate(stage):
            assert isinstance(block, DlibResidualBlock)
            prefix = f"stages.{stage_index}.{block_index}"
            plan += [_conv(f"{prefix}.conv1", block.conv1), _Planned("affine", f"{prefix}.norm1"), _Planned("relu")]
            plan += [_conv(f"{prefix}.conv2", block.conv2), _Planned("affine", f"{prefix}.norm2")]
            if isinstance(block.shortcut, nn.AvgPool2d):
                plan.append(_pool("avg_pool", block.shortcut))
            plan += [_Planned("add_prev"), _Planned("relu")]
    # avg_pool_everything: dlib's window 0x0 means "the whole map".
    everything = {"nr": 0, "nc": 0, "stride_y": 1, "stride_x": 1, "padding_y": 0, "padding_x": 0}
    plan.append(_Planned("avg_pool", None, everything))
    embedding = {"num_outputs": model.embedding.out_features, "num_inputs": model.embedding.in_features}
    plan.append(_Planned("fc", "embedding", embedding | {"has_bias": False}))
    return plan


def _where(net: DlibNet, index: int, layer: DlibLayer) -> str:
    return f"{net.source}: layer {index} from the input ({layer.version} at offset {layer.offset})"


def _folded_affine(net: DlibNet, index: int, layer: DlibLayer) -> tuple[Tensor, Tensor]:
    """Scale and shift of an ``affine`` layer, or of a ``bn_con`` layer folded the way dlib folds it at inference."""
    if layer.kind == "affine":
        if layer.attributes["mode"] != "conv":
            raise ValueError(f"{_where(net, index, layer)}: an fc-mode affine layer where a conv-mode one belongs")
        if layer.attributes["disabled"]:
            return torch.ones(0), torch.zeros(0)  # sized by the caller
        return layer.tensors["gamma"].reshape(-1), layer.tensors["beta"].reshape(-1)
    if layer.kind != "bn_con":
        raise ValueError(f"{_where(net, index, layer)}: expected an affine or bn_con layer, found {layer.kind!r}")
    # dlib's affine_(bn_) constructor: gamma / sqrt(running_variance + eps), beta - scale * running_mean.
    eps = float(layer.attributes["eps"])
    scale = layer.tensors["gamma"].reshape(-1) / torch.sqrt(layer.tensors["running_variances"].reshape(-1) + eps)
    return scale, layer.tensors["beta"].reshape(-1) - scale * layer.tensors["running_means"].reshape(-1)


def dlib_state_dict(net: DlibNet, model: DlibResNet) -> dict[str, Tensor]:
    """``model``'s state dict from a dlib network file, after checking every layer's kind, settings and shapes.

    Args:
        net: What :func:`~lightning_margin.importers.dlib_format.read_dlib_net` read.
        model: A :class:`DlibResNet` built with ``norm="affine"`` (its shapes say what the file must hold).

    Raises:
        ValueError: the file is another network: the message names the first layer (index and byte offset) that
            differs and how.
    """
    if model.norm != "affine":
        raise ValueError(
            f"dlib files hold inference-time (affine) layers: build the model with norm='affine', not {model.norm!r}"
        )
    plan = dlib_layer_plan(model)
    if len(net.layers) != len(plan):
        kinds = [layer.kind for layer in net.layers]
        raise ValueError(
            f"{net.source}: {len(net.layers)} layers (from the input: {', '.join(kinds[:8])}, ...), but dlib's "
            f"face-recognition ResNet has {len(plan)}; this is another network"
        )
    modules = dict(model.named_modules())
    state: dict[str, Tensor] = {}
    for index, (layer, planned) in enumerate(zip(net.layers, plan, strict=True)):
        kinds = ("affine", "bn_con") if planned.kind == "affine" else (planned.kind,)
        if layer.kind not in kinds:
            raise ValueError(f"{_where(net, index, layer)}: a {layer.kind!r} layer where a {planned.kind!r} belongs")
        for name, expected in planned.attributes.items():
            if layer.attributes.get(name) != expected:
                raise ValueError(
                    f"{_where(net, index, layer)}: {layer.kind} {name}={layer.attributes.get(name)!r}, but dlib's "
                    f"face-recognition ResNet has {name}={expected!r} here"
                )
        if (layer.kind == "relu" and layer.attributes["disabled"]) or layer.attributes.get("use_relu"):
            raise ValueError(f"{_where(net, index, layer)}: a disabled or fused ReLU, which DlibResNet cannot hold")
        if planned.module is None:
            continue
        module = modules[planned.module]
        if planned.kind == "con":
            assert isinstance(module, nn.Conv2d)
            weights = {"weight": layer.tensors["filters"]}
            biases = layer.tensors.get("biases")
            weights["bias"] = biases.reshape(-1) if biases is not None else torch.zeros(module.out_channels)
        elif planned.kind == "affine":
            scale, shift = _folded_affine(net, index, layer)
            if scale.numel() == 0:  # a disabled affine layer passes its input through
                scale, shift = torch.ones_like(module.weight), torch.zeros_like(module.bias)
            weights = {"weight": scale, "bias": shift}
        else:  # fc: dlib multiplies [batch, inputs] by weights [inputs, outputs]; nn.Linear holds the transpose
            fc_weights = layer.tensors["weights"]
            weights = {"weight": fc_weights.reshape(fc_weights.shape[0], -1).t()}
        for name, value in weights.items():
            target = getattr(module, name)
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"{_where(net, index, layer)}: {name} of shape {tuple(value.shape)}, but {planned.module}.{name} "
                    f"has shape {tuple(target.shape)}"
                )
            state[f"{planned.module}.{name}"] = value.contiguous()
    return state


def _float32(value: float) -> float:
    """A float32 field of dlib's as the shortest decimal that reads back as it (0.04, not 0.03999999910593033)."""
    return float(str(np.float32(value)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dlib_import(net: DlibNet, provenance: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The :class:`~lightning_margin.FaceEmbedder` arguments and weights of a dlib face-recognition network.

    The config records dlib's input: the input layer's size (150) and channel means, ``std = 256 / 255`` (dlib divides
    by 256), RGB, no crop, dlib's face chip as the alignment; the loss (``loss_metric`` with its margin and distance
    threshold); the import record (:func:`~lightning_margin.importers.imported_record`: file, licence, and
    ``provenance``'s entries such as the file's sha256). The weights are keyed as the embedder's state dict
    (``backbone.*``).

    Raises:
        ValueError: the file is a dlib network but not this architecture (names the first layer that differs).
    """
    if not net.input.kind.startswith("input_rgb_image"):
        raise ValueError(f"{net.source}: input layer {net.input.version!r}, expected dlib's input_rgb_image(_sized)")
    input_size = int(net.input.attributes.get("nr", DLIB_INPUT_SIZE))
    if net.input.attributes.get("nc", input_size) != input_size:
        raise ValueError(f"{net.source}: a {input_size}x{net.input.attributes['nc']} input; the embedder takes squares")
    means = [_float32(net.input.attributes[key]) for key in ("avg_red", "avg_green", "avg_blue")]
    last = net.layers[-1] if net.layers else None
    embedding_size = int(last.attributes.get("num_outputs", 0)) if last is not None and last.kind == "fc" else 0
    if embedding_size < 1:
        raise ValueError(f"{net.source}: the last layer is not dlib's fc embedding layer; this is another network")
    backbone_kwargs: dict[str, Any] = {"norm": "affine"}
    if embedding_size != DLIB_EMBEDDING_SIZE:
        backbone_kwargs["embedding_size"] = embedding_size
    model = DlibResNet(**backbone_kwargs)
    weights = {f"backbone.{key}": value for key, value in dlib_state_dict(net, model).items()}
    config = {
        "backbone": "dlib_resnet",
        "embedding_size": embedding_size,
        "neck": "identity",
        "backbone_kwargs": backbone_kwargs,
        "input_size": input_size,
        "crop_size": None,
        "mean": [mean / 255.0 for mean in means],
        "std": [DLIB_INPUT_SCALE / 255.0] * 3,
        "channel_order": "RGB",
        "alignment": DLIB_ALIGNMENT,
        "loss": net.loss.kind,
        "loss_kwargs": {key: _float32(value) for key, value in net.loss.attributes.items()},
        "training": imported_record("dlib", Path(net.source).name, "dlib_resnet", DLIB_LICENSE, **(provenance or {})),
    }
    return config, weights


def read_dlib_model(path: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """:func:`dlib_import` of a dlib model file; ``None``: the one face-recognition-models installed.

    Raises:
        FileNotFoundError: no such file (or, for ``None``, face-recognition-models is not installed).
        DlibFormatError: the file is not a dlib network this reader understands (names the file and offset).
        ValueError: it is a dlib network, but not this architecture (names the first layer that differs).
    """
    file = installed_dlib_model() if path is None else Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such dlib model file")
    return dlib_import(read_dlib_net(file), {"url": DLIB_MODELS_URL, "sha256": _sha256(file)})


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dat",
        metavar="FILE",
        default=None,
        help=f"the dlib model file (default: the {DLIB_RECOGNITION_MODEL} that face-recognition-models installed)",
    )


@register_importer(
    "dlib",
    add_arguments=_add_arguments,
    description="dlib's face-recognition ResNet (a .dat file; default: the one face-recognition-models installed)",
)
def import_dlib(dat: str | os.PathLike[str] | None = None) -> ImportedWeights:
    """Read dlib's face-recognition model as an embedder: 150x150 RGB dlib face chips, 128-d output.

    Args:
        dat: The ``.dat`` file; ``None``: the one face-recognition-models installed (:func:`installed_dlib_model`).

    Raises:
        FileNotFoundError: no such file, or face-recognition-models is not installed (saying how to get it).
        DlibFormatError: not a dlib network this reader understands (names the file and the byte offset).
        ValueError: a dlib network, but not this one (names the first layer that differs).
    """
    file = installed_dlib_model() if dat is None else Path(dat)
    config, weights = read_dlib_model(file)
    # The layers were checked one by one against the architecture, so the keys are the embedder's own.
    return ImportedWeights(config, weights, str(file), "dlib_resnet")
