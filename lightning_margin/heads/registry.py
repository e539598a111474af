"""The head registry: ``register_head``, ``create_head`` and ``list_heads``, as timm's ``create_model`` works."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from lightning_margin.heads.base import MarginHead

__all__ = ["create_head", "get_head_class", "list_heads", "register_head"]

_HEADS: dict[str, type[MarginHead]] = {}
HeadT = TypeVar("HeadT", bound=type[MarginHead])


def register_head(name: str) -> Callable[[HeadT], HeadT]:
    """Class decorator that makes a head available to :func:`create_head` under a short lowercase ``name``.

    Example:
        >>> @register_head("my_margin")  # doctest: +SKIP
        ... class MyMargin(CosineMarginHead): ...
    """
    if name != name.lower() or not name.isidentifier():
        raise ValueError(f"head names are lowercase identifiers, got {name!r}")

    def decorator(cls: HeadT) -> HeadT:
        if name in _HEADS and _HEADS[name] is not cls:
            raise ValueError(f"a head named {name!r} is already registered ({_HEADS[name].__qualname__})")
        _HEADS[name] = cls
        cls.head_name = name
        return cls

    return decorator


def list_heads(pattern: str = "*") -> list[str]:
    """Sorted names of the registered heads, optionally filtered by a shell-style ``pattern``.

    Example:
        >>> list_heads("*face")
        ['adaface', 'arcface', 'cosface', 'curricularface', 'magface', 'normface', 'sphereface', 'subcenter_arcface']
    """
    return sorted(fnmatch.filter(_HEADS, pattern))


def get_head_class(name: str) -> type[MarginHead]:
    """The class registered as ``name``; ``ValueError`` listing the registered names otherwise."""
    try:
        return _HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; available heads: {', '.join(list_heads())}") from None


def create_head(name: str, embedding_size: int, num_classes: int, **hyperparameters: Any) -> MarginHead:
    """Build a registered head by name.

    Args:
        name: A name from :func:`list_heads` (``"arcface"``, ``"cosface"``, ...).
        embedding_size: Width of the embeddings.
        num_classes: Number of identities.
        **hyperparameters: The head's own arguments (``scale``, ``margin``, ...); unknown ones raise
            ``ValueError`` listing the accepted ones.

    Example:
        >>> head = create_head("arcface", embedding_size=512, num_classes=1000, margin=0.5)
        >>> head.weight.shape
        torch.Size([1000, 512])
    """
    cls = get_head_class(name)
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("embedding_size", "num_classes")]
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise ValueError(
            f"head {name!r} does not take {', '.join(map(repr, unknown))}; "
            f"its hyperparameters are: {', '.join(accepted) or '(none)'}"
        )
    return cls(embedding_size=embedding_size, num_classes=num_classes, **hyperparameters)
