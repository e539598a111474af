"""Import AdaFace Lightning checkpoints (ir_18, ir_34, ir_50, ir_101, ir_se_50).

AdaFace (Kim et al., "AdaFace: Quality Adaptive Margin for Face Recognition", CVPR 2022; github.com/mk-minchul/AdaFace)
releases PyTorch Lightning ``.ckpt`` files: ``state_dict`` holds the backbone under ``model.`` (its ``net.py``:
``input_layer``, a flat ``body`` of IR units, ``output_layer`` = BN2d, Dropout, Flatten, Linear, BatchNorm1d without
affine parameters) and the AdaFace head's class centres as ``head.kernel``, which an embedder does not need and
which is dropped. The backbone is our :class:`~lightning_margin.backbones.IResNet` registered as ``ir_*`` (a
parameter-free pooling shortcut in the first unit; squeeze-and-excitation in ``ir_se_50``) with the ``fc_bn`` neck,
whose BatchNorm1d gets scale 1 and shift 0.

AdaFace models take **BGR** faces aligned to the ArcFace 5-point template at 112x112, normalised as
``(pixel / 255 - 0.5) / 0.5``. The imported embedder records ``channel_order="BGR"``: its ``embed`` (and its ONNX
export) still take RGB images and swap the channels inside.

The checkpoint is read without running any code it names; its ``hyper_parameters`` (which name the ``arch``) may hold
Lightning's ``AttributeDict``, read as a plain dict (:func:`~lightning_margin.importers.read_checkpoint`).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_margin.backbones.iresnet import ADAFACE_IR, IRESNET_LAYERS
from lightning_margin.importers._checkpoint import read_checkpoint
from lightning_margin.importers.insightface import INSIGHTFACE_PREPROCESSING
from lightning_margin.importers.registry import ImportedWeights, imported_record, register_importer

__all__ = [
    "ADAFACE_ARCHS",
    "ADAFACE_LICENSE",
    "adaface_config",
    "adaface_key",
    "guess_adaface_arch",
    "import_adaface",
]

#: AdaFace's ``net.build_model`` names; each is also our timm backbone name.
ADAFACE_ARCHS: tuple[str, ...] = tuple(ADAFACE_IR)

#: The terms of AdaFace's released weights, recorded in the embedder's config and shown in its card.
ADAFACE_LICENSE = (
    "the AdaFace code is MIT-licensed; the released checkpoints come without a licence of their own and were trained "
    "on CASIA-WebFace, VGGFace2, MS1MV2/MS1MV3 or WebFace4M/12M, whose terms allow non-commercial research only"
)

_PREFIX = "model."
# Our IR unit's layers -> the index (or name) of the layer in AdaFace's res_layer / shortcut_layer.
_UNIT = {"bn1": "res_layer.0", "conv1": "res_layer.1", "bn2": "res_layer.2", "act": "res_layer.3"}
_UNIT |= {"conv2": "res_layer.4", "bn3": "res_layer.5", "se": "res_layer.se_block", "downsample": "shortcut_layer"}
_STEM = {"conv1": "input_layer.0", "bn1": "input_layer.1", "act1": "input_layer.2", "norm": "output_layer.0"}
_NECK = {"1": "output_layer.3", "2": "output_layer.4"}  # the fc_bn neck's Linear and BatchNorm1d
_NECK_NORM = "model.output_layer.4"


def adaface_key(arch: str) -> Callable[[str], str]:
    """Our embedder key -> the AdaFace checkpoint's key (``model.`` prefix, the flat ``body`` index).

    Example:
        >>> key = adaface_key("ir_50")
        >>> key("backbone.layer2.0.downsample.1.weight"), key("backbone.layer3.1.act.weight"), key("neck.1.bias")
        ('model.body.3.shortcut_layer.1.weight', 'model.body.8.res_layer.3.weight', 'model.output_layer.3.bias')
    """
    layers = IRESNET_LAYERS[ADAFACE_IR[arch][0]]
    # The body's index of each stage's first unit.
    first = [sum(layers[:stage]) for stage in range(4)]

    def source_key(key: str) -> str:
        if key.startswith("neck."):
            index, _, rest = key[len("neck.") :].partition(".")
            return f"{_PREFIX}{_NECK.get(index, index)}.{rest}"
        parts = key.removeprefix("backbone.").split(".")
        match = re.fullmatch(r"layer(\d)", parts[0])
        if match:
            unit = first[int(match[1]) - 1] + int(parts[1])
            return ".".join([f"{_PREFIX}body.{unit}", _UNIT.get(parts[2], parts[2]), *parts[3:]])
        return ".".join([_PREFIX + _STEM.get(parts[0], parts[0]), *parts[1:]])

    return source_key


def guess_adaface_arch(weights: Mapping[str, Tensor]) -> str | None:
    """The AdaFace arch whose layout the ``model.*`` keys and shapes match: units per width, and SE gates.

    Example:
        >>> widths = [64] * 3 + [128] * 4 + [256] * 14 + [512] * 3
        >>> guess_adaface_arch({f"model.body.{i}.res_layer.1.weight": torch.ones(c, 1, 1, 1)
        ...                     for i, c in enumerate(widths)})
        'ir_50'
    """
    widths: dict[int, int] = {}
    for key, value in weights.items():
        match = re.fullmatch(r"model\.body\.(\d+)\.res_layer\.1\.weight", key)
        if match:
            widths[int(match[1])] = int(value.shape[0])
    if not widths:
        return None
    counts = tuple(sum(1 for width in widths.values() if width == channels) for channels in (64, 128, 256, 512))
    se = any(".se_block." in key for key in weights)
    for name, (depth, reduction) in ADAFACE_IR.items():
        if IRESNET_LAYERS[depth] == counts and bool(reduction) == se:
            return name
    return None


def _hyperparameter_arch(checkpoint: Mapping[str, Any]) -> str | None:
    hyperparameters = checkpoint.get("hyper_parameters")
    if isinstance(hyperparameters, Mapping):
        arch = hyperparameters.get("arch")
        return arch if isinstance(arch, str) else None
    arch = getattr(hyperparameters, "arch", None)  # an argparse.Namespace, read as a plain attribute holder
    return arch if isinstance(arch, str) else None


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="an AdaFace Lightning checkpoint (.ckpt)")
    parser.add_argument(
        "--arch",
        default="auto",
        choices=["auto", *ADAFACE_ARCHS],
        help="the network (AdaFace's name); auto: the checkpoint's hyper_parameters, else the shapes (default)",
    )


@register_importer(
    "adaface",
    add_arguments=_add_arguments,
    description="an AdaFace Lightning .ckpt (ir_18, ir_34, ir_50, ir_101, ir_se_50); the head's kernel is dropped",
)
def import_adaface(checkpoint: str | os.PathLike[str], arch: str = "auto") -> ImportedWeights:
    """Read an AdaFace ``.ckpt`` as an embedder: BGR, ArcFace-aligned 112x112, raw 512-d output.

    Args:
        checkpoint: The Lightning checkpoint (``state_dict`` with ``model.*`` keys and ``head.kernel``).
        arch: AdaFace's network name or ``"auto"``: the checkpoint's ``hyper_parameters["arch"]``, else the one
            the shapes match.

    Raises:
        ValueError: an unknown arch, a file without a ``state_dict`` of ``model.*`` tensors, or ``"auto"`` when
            neither the hyper-parameters nor the shapes name a known network.
    """
    allowed = ["auto", *ADAFACE_ARCHS]
    if arch not in allowed:
        raise ValueError(f"`arch` must be one of {', '.join(map(repr, allowed))}; got {arch!r}")
    path = Path(checkpoint)
    content = read_checkpoint(path)
    state_dict = content.get("state_dict") if isinstance(content, Mapping) else None
    if not isinstance(state_dict, Mapping) or not any(str(key).startswith(_PREFIX) for key in state_dict):
        raise ValueError(
            f"{path}: not an AdaFace Lightning checkpoint (expected a `state_dict` whose backbone keys start with "
            f"{_PREFIX!r}, as AdaFace's train_val.Trainer saves it)"
        )
    # The embedder is the backbone: the head's class centres (head.kernel) and anything else are not part of it.
    weights = {key: value for key, value in state_dict.items() if key.startswith(_PREFIX)}
    dropped = sorted(key for key in state_dict if not key.startswith(_PREFIX))
    guess = guess_adaface_arch(weights)
    if arch == "auto":
        recorded = _hyperparameter_arch(content)
        arch = recorded if recorded in ADAFACE_ARCHS else guess  # type: ignore[assignment]
        if arch is None:
            raise ValueError(
                f"{path}: neither its hyper_parameters nor its shapes name one of {', '.join(ADAFACE_ARCHS)}; "
                "pass --arch explicitly to see which keys differ"
            )
    # AdaFace's last BatchNorm1d has no affine parameters: the neck's BatchNorm gets scale 1 and shift 0.
    running_mean = weights.get(f"{_NECK_NORM}.running_mean")
    if running_mean is not None:
        weights.setdefault(f"{_NECK_NORM}.weight", torch.ones_like(running_mean))
        weights.setdefault(f"{_NECK_NORM}.bias", torch.zeros_like(running_mean))
    linear = weights.get(f"{_PREFIX}{_NECK['1']}.weight")
    embedding_size = int(linear.shape[0]) if linear is not None and linear.ndim == 2 else 512
    details = {"dropped": dropped or None, "epoch": content.get("epoch"), "global_step": content.get("global_step")}
    config = adaface_config(arch, embedding_size, path.name, **details)
    return ImportedWeights(config, weights, str(path), arch, adaface_key(arch), guess)


def adaface_config(arch: str, embedding_size: int = 512, file: str = "model.ckpt", **details: Any) -> dict[str, Any]:
    """The :class:`~lightning_margin.FaceEmbedder` arguments of an AdaFace network; ``details`` join the record.

    Example:
        >>> config = adaface_config("ir_se_50")
        >>> config["backbone"], config["neck"], config["channel_order"], config["alignment"]
        ('ir_se_50', 'fc_bn', 'BGR', 'arcface')
    """
    allowed = list(ADAFACE_ARCHS)
    if arch not in allowed:
        raise ValueError(f"`arch` must be one of {', '.join(map(repr, allowed))}; got {arch!r}")
    return {
        "backbone": arch,
        "embedding_size": embedding_size,
        "neck": "fc_bn",
        "backbone_kwargs": {"global_pool": "flatten"},
        **INSIGHTFACE_PREPROCESSING,
        "channel_order": "BGR",
        "loss": "adaface",
        "training": imported_record(
            "adaface", file, arch, ADAFACE_LICENSE, url="https://github.com/mk-minchul/AdaFace", **details
        ),
    }
