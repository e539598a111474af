"""Turning head specifications (names, ``(name, kwargs)`` pairs, modules) into labelled heads for the plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from lightning_margin.heads import create_head

__all__ = ["DEFAULT_HEADS", "HeadSpec", "HeadsArg", "head_legend_label", "resolve_heads", "rows_per_class"]

HeadSpec = str | tuple[str, Mapping[str, Any]] | nn.Module
HeadsArg = Mapping[str, HeadSpec] | Sequence[HeadSpec]

# The losses the ArcFace paper compares (its target-logit and decision-margin figures). SphereFace is shown with
# lambda = 5, the value its annealing schedule ends at in training, as in that comparison.
DEFAULT_HEADS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("softmax", {}),
    ("sphereface", {"margin": 4, "lambda_": 5.0}),
    ("cosface", {"margin": 0.35}),
    ("arcface", {"margin": 0.5}),
    ("combined", {"m1": 1.0, "m2": 0.3, "m3": 0.2}),
)

_DISPLAY_NAMES = {
    "softmax": "Softmax",
    "modified_softmax": "Modified softmax",
    "normface": "NormFace",
    "lsoftmax": "L-Softmax",
    "sphereface": "SphereFace",
    "cosface": "CosFace",
    "arcface": "ArcFace",
    "combined": "Combined margin",
    "subcenter_arcface": "Sub-center ArcFace",
    "curricularface": "CurricularFace",
    "adaface": "AdaFace",
    "magface": "MagFace",
}
# Hyperparameters that change the target logit, with the symbols the papers use for them.
_SYMBOLS = {
    "scale": "s",
    "margin": "m",
    "m1": "m1",
    "m2": "m2",
    "m3": "m3",
    "lambda_": "λ",
    "lower_margin": "l_m",
    "upper_margin": "u_m",
}


def rows_per_class(head: nn.Module) -> int:
    """Weight rows per class: the number of sub-centres of a sub-center head, 1 otherwise."""
    return int(getattr(head, "rows_per_class", getattr(head, "num_subcenters", 1)))


def head_legend_label(head: nn.Module) -> str:
    """A legend label such as ``"ArcFace (s=64, m=0.5)"``, read from the head's hyperparameter attributes."""
    name = getattr(head, "head_name", None)
    label = _DISPLAY_NAMES.get(name, name) if name else type(head).__name__
    values = [
        f"{symbol}={getattr(head, attribute):g}"
        for attribute, symbol in _SYMBOLS.items()
        if isinstance(getattr(head, attribute, None), (int, float)) and not isinstance(getattr(head, attribute), bool)
    ]
    if getattr(head, "easy_margin", False):
        values.append("easy")
    return f"{label} ({', '.join(values)})" if values else label


def _build(spec: HeadSpec, embedding_size: int, num_classes: int) -> nn.Module:
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str):
        return create_head(spec, embedding_size=embedding_size, num_classes=num_classes)
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], Mapping):
        return create_head(spec[0], embedding_size=embedding_size, num_classes=num_classes, **spec[1])
    raise ValueError(f"a head is a registered name, a (name, hyperparameters) pair or an nn.Module; got {spec!r}")


def resolve_heads(heads: HeadsArg | None, *, embedding_size: int = 3, num_classes: int = 2) -> dict[str, nn.Module]:
    """Labelled heads: a mapping keeps its labels, a sequence is labelled by :func:`head_legend_label`.

    Heads given by name are built with ``embedding_size`` and ``num_classes`` (their maths does not depend on
    either); ``None`` means :data:`DEFAULT_HEADS`.
    """
    if heads is None:
        heads = DEFAULT_HEADS
    if isinstance(heads, Mapping):
        resolved = {str(label): _build(spec, embedding_size, num_classes) for label, spec in heads.items()}
    elif isinstance(heads, (str, nn.Module)) or not isinstance(heads, Sequence):
        raise ValueError(f"`heads` must be a sequence of head specifications or a mapping label -> head; got {heads!r}")
    else:
        resolved = {}
        for spec in heads:
            head = _build(spec, embedding_size, num_classes)
            label = head_legend_label(head)
            if label in resolved:
                raise ValueError(f"two heads would share the legend label {label!r}; pass a mapping label -> head")
            resolved[label] = head
    if not resolved:
        raise ValueError("`heads` is empty; give at least one head")
    return resolved
