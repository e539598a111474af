"""Build a backbone from its timm name and measure the width of its features.

The training module and the inference class both build backbones through here, so the inference side never imports
the training module.
"""

from __future__ import annotations

import difflib
from typing import Any

import timm
import torch
from torch import nn

# These modules register their models in timm's registry on import; FACE_BACKBONES needs them registered.
import lightning_margin.backbones.iresnet
import lightning_margin.backbones.mbf
import lightning_margin.backbones.mobilefacenet  # noqa: F401

__all__ = ["FACE_BACKBONES", "build_backbone", "feature_width", "sized_backbone_kwargs"]

#: The backbones this package registers in timm (they take ``img_size``: their pooling layers are sized for it).
FACE_BACKBONES = frozenset(timm.list_models(module=["iresnet", "mbf", "mobilefacenet"]))


def sized_backbone_kwargs(name: str, input_size: int, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``timm.create_model`` arguments of backbone ``name`` for ``input_size`` images: ``kwargs`` plus, for our
    face backbones, ``img_size=input_size`` (their pooling / GDC layers are sized for the input) unless given.

    Training and inference both build backbones with these, and the embedder records them in its config.

    Example:
        >>> sized_backbone_kwargs("iresnet18", 96), sized_backbone_kwargs("resnet18", 96, {"in_chans": 1})
        ({'img_size': 96}, {'in_chans': 1})
    """
    sized = dict(kwargs or {})
    if name in FACE_BACKBONES:
        sized.setdefault("img_size", input_size)
    return sized


def build_backbone(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A timm model (``num_classes=0``: features, no classifier); our face backbones are in timm's registry.

    Unknown names raise ``ValueError`` with the closest timm names.

    Example:
        >>> build_backbone("iresnet18", img_size=112).num_features
        512
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown backbone {name!r}: not a timm model name{hint} (face backbones: "
            f"{', '.join(sorted(FACE_BACKBONES))}; "
            "all names: timm.list_models())"
        )
    return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)


def feature_width(backbone: nn.Module, input_size: int, in_chans: int = 3) -> int:
    """Width of the backbone's flat output for ``input_size`` images, measured with one dummy forward.

    Example:
        >>> feature_width(nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 16)
        5
    """
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            param = next(backbone.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            out = backbone(torch.zeros(2, in_chans, input_size, input_size, device=device))
    finally:
        backbone.train(was_training)
    if out.ndim != 2:
        raise ValueError(
            f"the backbone must map images to flat features [batch, features], but for {input_size}x{input_size} "
            f"input it returns shape {tuple(out.shape)}; create timm models with num_classes=0 and a global_pool"
        )
    return out.shape[1]
