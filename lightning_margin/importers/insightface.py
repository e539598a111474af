"""Import insightface arcface_torch ``backbone.pth`` files (r18, r34, r50, r100, r200, mbf, mbf_large).

arcface_torch (Deng et al., "ArcFace", CVPR 2019; github.com/deepinsight/insightface, recognition/arcface_torch)
saves the backbone's plain ``state_dict`` as ``backbone.pth``. Its ``iresnet*`` is our
:class:`~lightning_margin.backbones.IResNet` with ``global_pool="flatten"`` followed by the ``fc_bn`` neck (its
``fc``/``features`` are the neck's Linear and BatchNorm1d); its ``mbf``/``mbf_large`` are our
:class:`~lightning_margin.backbones.MBF` with the ``identity`` neck. The keys are renamed, nothing is recomputed, so
the imported embedder gives insightface's embedding.

insightface models take RGB faces aligned to the ArcFace 5-point template at 112x112, normalised as
``(pixel / 255 - 0.5) / 0.5`` (:data:`INSIGHTFACE_PREPROCESSING`).

Example:
    >>> from lightning_margin.importers import create_importer
    >>> weights = create_importer("insightface").load(checkpoint="backbone.pth", arch="auto")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from lightning_margin.backbones.iresnet import IRESNET_LAYERS
from lightning_margin.backbones.mbf import MBF_VARIANTS
from lightning_margin.importers._checkpoint import read_checkpoint
from lightning_margin.importers.registry import ImportedWeights, imported_record, register_importer

__all__ = [
    "INSIGHTFACE_ARCHS",
    "INSIGHTFACE_LICENSE",
    "INSIGHTFACE_PREPROCESSING",
    "guess_insightface_arch",
    "import_insightface",
    "insightface_config",
    "insightface_key",
    "strip_prefix",
]

#: insightface's ``get_model`` names -> our timm backbone names.
INSIGHTFACE_ARCHS: dict[str, str] = {
    "r18": "iresnet18",
    "r34": "iresnet34",
    "r50": "iresnet50",
    "r100": "iresnet100",
    "r200": "iresnet200",
    "mbf": "mbf",
    "mbf_large": "mbf_large",
}

#: What insightface's models expect, and the AdaFace models too (their channel order aside): faces warped onto the
#: ArcFace 5-point template at 112x112, pixels normalised as ``(pixel / 255 - 0.5) / 0.5``, no further crop.
INSIGHTFACE_PREPROCESSING: dict[str, Any] = {
    "input_size": 112,
    "crop_size": None,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "alignment": "arcface",
}

#: The terms of insightface's released weights, recorded in the embedder's config and shown in its card.
INSIGHTFACE_LICENSE = (
    "insightface's released models are available for non-commercial research purposes only (the training data "
    "and the models trained on them); the arcface_torch code is MIT-licensed"
)

# Our module names inside one IR unit / the stem -> insightface's (the rest of a key is the same).
_IRESNET_NAMES = {"act": "prelu", "act1": "prelu", "norm": "bn2"}
_NECK_NAMES = {"1": "fc", "2": "features"}  # the fc_bn neck: Dropout, Linear, BatchNorm1d
# ConvBnPReLU's layers -> the indices of insightface's ConvBlock/LinearBlock Sequential.
_CONV_BLOCK = {"conv": "0", "bn": "1", "act": "2"}
_UNIT = {"expand": "0", "depthwise": "1", "project": "2"}  # a bottleneck's three blocks -> DepthWise.layers indices


def strip_prefix(weights: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The keys of ``weights`` without ``prefix`` when every key has it (DistributedDataParallel's ``module.``).

    Example:
        >>> sorted(strip_prefix({"module.a": 1, "module.b": 2}, "module."))
        ['a', 'b']
    """
    if weights and all(key.startswith(prefix) for key in weights):
        return {key[len(prefix) :]: value for key, value in weights.items()}
    return dict(weights)


def _iresnet_key(key: str) -> str:
    if key.startswith("neck."):
        index, _, rest = key[len("neck.") :].partition(".")
        return f"{_NECK_NAMES.get(index, index)}.{rest}"
    parts = key.removeprefix("backbone.").split(".")
    return ".".join(_IRESNET_NAMES.get(part, part) for part in parts)


def _mbf_key(key: str) -> str:
    """Our MBF key -> insightface's MobileFaceNet key (see the layout in :class:`~lightning_margin.backbones.MBF`)."""
    parts = key.removeprefix("backbone.").split(".")
    head, rest = parts[0], parts[1:]
    if head == "stem":  # layers[0]: ConvBlock
        return ".".join(["layers.0.layers", _CONV_BLOCK[rest[0]], *rest[1:]])
    if head == "stem_dw":
        if rest[0] in _CONV_BLOCK:  # mbf: layers[1] is a grouped ConvBlock
            return ".".join(["layers.1.layers", _CONV_BLOCK[rest[0]], *rest[1:]])
        unit, block, layer, *tail = rest  # mbf_large: layers[1] is a Residual of DepthWise units
        return ".".join(["layers.1.layers", unit, "layers", _UNIT[block], "layers", _CONV_BLOCK[layer], *tail])
    if head == "stages":
        stage, unit, block, layer, *tail = rest
        inner = ["layers", _UNIT[block], "layers", _CONV_BLOCK[layer], *tail]
        if unit == "0":  # the strided DepthWise: layers[2], [4], [6]
            return ".".join([f"layers.{2 + 2 * int(stage)}", *inner])
        # the stride-1 repeats: the Residual after it, layers[3], [5], [7]
        return ".".join([f"layers.{3 + 2 * int(stage)}.layers.{int(unit) - 1}", *inner])
    if head == "conv_head":
        return ".".join(["conv_sep.layers", _CONV_BLOCK[rest[0]], *rest[1:]])
    if head == "pool":  # GDC: features.layers[0] is a LinearBlock (conv, BN)
        return ".".join(["features.layers.0.layers", _CONV_BLOCK[rest[0]], *rest[1:]])
    if head == "embedding":
        return ".".join(["features.layers.2", *rest])
    if head == "embedding_norm":
        return ".".join(["features.layers.3", *rest])
    return key


def insightface_key(arch: str) -> Callable[[str], str]:
    """Our embedder key -> insightface's key, for an insightface arch name.

    Example:
        >>> insightface_key("r50")("backbone.layer3.13.act.weight"), insightface_key("r50")("neck.1.weight")
        ('layer3.13.prelu.weight', 'fc.weight')
        >>> insightface_key("mbf")("backbone.stages.1.3.depthwise.bn.running_mean")
        'layers.5.layers.2.layers.1.layers.1.running_mean'
    """
    return _mbf_key if INSIGHTFACE_ARCHS[arch].startswith("mbf") else _iresnet_key


def _units_per_stage(
    weights: Mapping[str, Tensor], template: str, stages: int = 4, first: int = 1, step: int = 1
) -> tuple[int, ...]:
    """Per stage ``first, first + step, ...``: 1 + the largest unit index that ``template.format(stage)`` captures."""
    counts = []
    for stage in range(first, first + step * stages, step):
        indices = [int(match[1]) for key in weights if (match := re.fullmatch(template.format(stage), key))]
        counts.append(max(indices) + 1 if indices else 0)
    return tuple(counts)


def guess_insightface_arch(weights: Mapping[str, Tensor]) -> str | None:
    """The insightface arch whose layout the keys and shapes of a ``backbone.pth`` state dict match, or ``None``.

    IResNets are told apart by their units per stage, ``mbf`` from ``mbf_large`` by the stem's width and the
    number of units.

    Example:
        >>> import torch
        >>> guess_insightface_arch({f"layer{s}.{i}.bn1.weight": torch.ones(1) for s, n in
        ...                         zip(range(1, 5), (3, 4, 14, 3)) for i in range(n)})
        'r50'
    """
    if "layer1.0.bn1.weight" in weights:
        layers = _units_per_stage(weights, r"layer{}\.(\d+)\.bn1\.weight")
        for name, backbone in INSIGHTFACE_ARCHS.items():
            if IRESNET_LAYERS.get(backbone) == layers:
                return name
        return None
    stem = weights.get("layers.0.layers.0.weight")
    if stem is not None:
        # Units of the Residual stacks layers[3], [5], [7] (each holds `blocks[1:]` DepthWise units).
        residuals = _units_per_stage(weights, r"layers\.{}\.layers\.(\d+)\..*", stages=3, first=3, step=2)
        for name in ("mbf", "mbf_large"):
            blocks, scale = MBF_VARIANTS[name]
            if stem.shape[0] == 64 * scale and residuals == blocks[1:]:
                return name
    return None


def _embedding_size(weights: Mapping[str, Tensor], arch: str) -> int:
    key = "features.layers.2.weight" if INSIGHTFACE_ARCHS[arch].startswith("mbf") else "fc.weight"
    tensor = weights.get(key)
    return int(tensor.shape[0]) if tensor is not None and tensor.ndim == 2 else 512


def _backbone_weights(content: Any, path: Path) -> dict[str, Tensor]:
    """The backbone's tensors: ``backbone.pth`` is the state dict itself; a training checkpoint
    (``checkpoint_gpu_*.pt``) keeps it under ``state_dict_backbone``."""
    if isinstance(content, Mapping) and isinstance(content.get("state_dict_backbone"), Mapping):
        content = content["state_dict_backbone"]
    if not isinstance(content, Mapping) or not all(isinstance(value, Tensor) for value in content.values()):
        raise ValueError(
            f"{path}: not an insightface backbone state dict (expected a mapping of names to tensors, as "
            "arcface_torch saves backbone.pth)"
        )
    return strip_prefix(content, "module.")


def _check_arch(arch: str, allowed: list[str]) -> None:
    if arch not in allowed:
        raise ValueError(f"`arch` must be one of {', '.join(map(repr, allowed))}; got {arch!r}")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="arcface_torch's backbone.pth (a plain state dict)")
    parser.add_argument(
        "--arch",
        default="auto",
        choices=["auto", *INSIGHTFACE_ARCHS],
        help="the network (insightface's name); auto: read from the keys and shapes (default)",
    )


@register_importer(
    "insightface",
    add_arguments=_add_arguments,
    description="an insightface arcface_torch backbone.pth (r18, r34, r50, r100, r200, mbf, mbf_large)",
)
def import_insightface(checkpoint: str | os.PathLike[str], arch: str = "auto") -> ImportedWeights:
    """Read an arcface_torch ``backbone.pth`` as an embedder: RGB, ArcFace-aligned 112x112, raw 512-d output.

    Args:
        checkpoint: The ``backbone.pth`` (or a ``checkpoint_gpu_*.pt`` training checkpoint, whose
            ``state_dict_backbone`` is used).
        arch: insightface's network name (``r18`` ... ``r200``, ``mbf``, ``mbf_large``) or ``"auto"``.

    Raises:
        ValueError: an unknown arch, a file that is not a backbone state dict, or ``"auto"`` when the shapes match
            no known network.
    """
    _check_arch(arch, ["auto", *INSIGHTFACE_ARCHS])
    path = Path(checkpoint)
    weights = _backbone_weights(read_checkpoint(path), path)
    guess = guess_insightface_arch(weights)
    if arch == "auto":
        if guess is None:
            raise ValueError(
                f"{path}: the keys and shapes match none of insightface's {', '.join(INSIGHTFACE_ARCHS)}; "
                "pass --arch explicitly to see which keys differ"
            )
        arch = guess
    config = insightface_config(arch, _embedding_size(weights, arch), path.name)
    return ImportedWeights(config, weights, str(path), arch, insightface_key(arch), guess)


def insightface_config(arch: str, embedding_size: int = 512, file: str = "backbone.pth") -> dict[str, Any]:
    """The :class:`~lightning_margin.FaceEmbedder` arguments of an insightface network.

    Example:
        >>> config = insightface_config("r50")
        >>> config["backbone"], config["neck"], config["backbone_kwargs"], config["channel_order"]
        ('iresnet50', 'fc_bn', {'global_pool': 'flatten'}, 'RGB')
    """
    _check_arch(arch, list(INSIGHTFACE_ARCHS))
    backbone = INSIGHTFACE_ARCHS[arch]
    mbf = backbone.startswith("mbf")
    return {
        "backbone": backbone,
        "embedding_size": embedding_size,
        "neck": "identity" if mbf else "fc_bn",
        "backbone_kwargs": {"embedding_size": embedding_size} if mbf else {"global_pool": "flatten"},
        **INSIGHTFACE_PREPROCESSING,
        "channel_order": "RGB",
        "training": imported_record(
            "insightface",
            file,
            arch,
            INSIGHTFACE_LICENSE,
            url="https://github.com/deepinsight/insightface/tree/master/recognition/arcface_torch",
        ),
    }
