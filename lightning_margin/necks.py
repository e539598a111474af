"""Embedding necks: the layers between a backbone's features and the embedding (ArcFace paper, §3.2 / Table 3).

The ArcFace paper compares output layers after the last convolution; option E, ``BN-Dropout-FC-BN``, gave the
best verification accuracy and is the insightface default. Names: ``bn_dropout_fc_bn`` (E), ``fc_bn`` (C),
``linear`` (B: a plain fully connected layer) and ``identity`` (the backbone already outputs the embedding).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lightning_margin._validation import check_choice, check_integer, check_range

__all__ = ["create_neck", "list_necks"]


def _bn_dropout_fc_bn(in_features: int, embedding_size: int, dropout: float) -> nn.Module:
    return nn.Sequential(
        nn.BatchNorm1d(in_features),
        nn.Dropout(dropout),
        nn.Linear(in_features, embedding_size),
        nn.BatchNorm1d(embedding_size),
    )


def _fc_bn(in_features: int, embedding_size: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, embedding_size), nn.BatchNorm1d(embedding_size))


def _linear(in_features: int, embedding_size: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, embedding_size))


def _identity(in_features: int, embedding_size: int, dropout: float) -> nn.Module:
    if in_features != embedding_size:
        raise ValueError(
            f"neck 'identity' needs the backbone to output embedding_size={embedding_size} features, but it outputs "
            f"{in_features}; use neck 'bn_dropout_fc_bn', 'fc_bn' or 'linear', or set embedding_size={in_features}"
        )
    return nn.Identity()


_NECKS: dict[str, Callable[[int, int, float], nn.Module]] = {
    "bn_dropout_fc_bn": _bn_dropout_fc_bn,
    "fc_bn": _fc_bn,
    "identity": _identity,
    "linear": _linear,
}


def list_necks() -> list[str]:
    """Names accepted by :func:`create_neck`."""
    return sorted(_NECKS)


def create_neck(name: str, in_features: int, embedding_size: int, dropout: float = 0.0) -> nn.Module:
    """Build the neck mapping ``[B, in_features]`` backbone features to ``[B, embedding_size]`` embeddings.

    Example:
        >>> create_neck("bn_dropout_fc_bn", in_features=25088, embedding_size=512, dropout=0.4)[2]
        Linear(in_features=25088, out_features=512, bias=True)
    """
    check_choice("neck", name, list_necks())
    check_integer("in_features", in_features)
    check_integer("embedding_size", embedding_size)
    check_range("dropout", dropout, 0.0, 1.0, high_inclusive=False)
    return _NECKS[name](in_features, embedding_size, dropout)
