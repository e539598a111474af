"""The head registry: ``register_head``, ``create_head`` and ``list_heads``, as timm's ``create_model`` works."""

from __future__ import annotations

import fnmatch
import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from lightning_margin.heads.base import MarginHead

__all__ = [
    "HeadCallable",
    "create_head",
    "get_head_class",
    "get_head_name",
    "head_class_from_path",
    "head_config",
    "list_heads",
    "recorded_head_name",
    "register_head",
]

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


# ---- a head's record: registry name and hyperparameters, in LightningCLI's class_path/init_args form ---------------

#: What :class:`~lightning_margin.MarginModule` takes as ``head``: ``(embedding_size, num_classes) -> head``, as
#: LightningCLI's ``OptimizerCallable`` takes the parameters. A head class is one; so is
#: ``functools.partial(ArcFace, margin=0.4)``, and what the CLI builds from ``{class_path: ..., init_args: ...}``.
HeadCallable = Callable[[int, int], MarginHead]


def get_head_name(head: MarginHead | type[MarginHead]) -> str:
    """The registry name of a head or head class; ``ValueError`` if that exact class is not registered.

    Example:
        >>> from lightning_margin.heads import CosFace
        >>> get_head_name(CosFace)
        'cosface'
    """
    cls = head if isinstance(head, type) else type(head)
    for name, registered in _HEADS.items():
        if registered is cls:
            return name
    raise ValueError(f"{cls.__qualname__} is not a registered head; register it with @register_head(name)")


def head_class_from_path(class_path: str) -> type[MarginHead]:
    """The registered head class that ``class_path`` names: its import path (``lightning_margin.heads.ArcFace``,
    ``lightning_margin.heads.arcface.ArcFace``), its class name (``ArcFace``) or its registry name (``arcface``).

    Only registered classes are considered and nothing is imported, so a path read from a checkpoint runs no code.

    Example:
        >>> head_class_from_path("lightning_margin.heads.ArcFace").__name__
        'ArcFace'
    """
    if class_path in _HEADS:
        return _HEADS[class_path]
    module, _, class_name = class_path.rpartition(".")
    for cls in _HEADS.values():
        # The defining module, or a package above it that re-exports the class (lightning_margin.heads).
        defined_under = not module or cls.__module__ == module or cls.__module__.startswith(module + ".")
        if cls.__name__ == class_name and defined_under:
            return cls
    raise ValueError(f"no registered head class at {class_path!r}; available heads: {', '.join(list_heads())}")


def head_config(head: MarginHead) -> dict[str, Any]:
    """A head's record ``{"class_path": ..., "init_args": ...}``: its class's import path and its ``hparams``.

    Plain strings and numbers (a checkpoint loads it with ``torch.load(weights_only=True)``), in the form LightningCLI
    configs use, so that the record parses back as a ``head`` argument.

    Example:
        >>> from lightning_margin.heads import CosFace
        >>> head_config(CosFace(embedding_size=8, num_classes=4, margin=0.2))
        {'class_path': 'lightning_margin.heads.CosFace', 'init_args': {'scale': 64.0, 'margin': 0.2}}
    """
    cls = type(head)
    path = f"{cls.__module__}.{cls.__qualname__}"
    package = cls.__module__.rpartition(".")[0]
    if package and getattr(sys.modules.get(package), cls.__name__, None) is cls:
        path = f"{package}.{cls.__name__}"  # the public path: the package re-exports it (lightning_margin.heads)
    return {"class_path": path, "init_args": dict(head.hparams)}


def recorded_head_name(config: Mapping[str, Any]) -> str:
    """The registry name of the head that a :func:`head_config` record describes; its class path if that class is
    not registered (nothing is imported).

    Example:
        >>> recorded_head_name({"class_path": "lightning_margin.heads.cosface.CosFace", "init_args": {"margin": 0.2}})
        'cosface'
    """
    class_path = config.get("class_path")
    if not isinstance(class_path, str):
        raise ValueError(f"a head record needs a `class_path` string, got keys {sorted(config)}")
    try:
        return get_head_name(head_class_from_path(class_path))
    except ValueError:
        return class_path
