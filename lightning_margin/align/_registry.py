"""The name -> factory registry behind ``register_detector``/``create_detector`` and ``register_alignment``/...

One mechanism for both extension points of :mod:`lightning_margin.align`, as timm's ``register_model`` and
``create_model`` work: a factory (a class or a function) is registered under a short lowercase name, ``create``
calls it with keyword options after checking them against its signature, ``names`` lists what is registered.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Factories of one kind of object, by name.

    Args:
        kind: What the factories build, for error messages (``"detector"``, ``"alignment"``).

    Example:
        >>> shapes = Registry("shape")
        >>> @shapes.register("square")
        ... def square(side: int = 2) -> int:
        ...     return side * side
        >>> shapes.names(), shapes.create("square", side=3)
        (['square'], 9)
        >>> shapes.create("square", radius=1)
        Traceback (most recent call last):
        ...
        ValueError: shape 'square' does not take 'radius'; its options are: side
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator registering a factory (class or function) under ``name``, a lowercase identifier."""
        if not isinstance(name, str) or name != name.lower() or not name.isidentifier():
            raise ValueError(f"{self.kind} names are lowercase identifiers, got {name!r}")

        def decorator(factory: F) -> F:
            if name in self._factories and self._factories[name] is not factory:
                raise ValueError(f"a {self.kind} named {name!r} is already registered ({self._factories[name]!r})")
            self._factories[name] = factory
            return factory

        return decorator

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching the shell-style ``pattern``."""
        return sorted(fnmatch.filter(self._factories, pattern))

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``; ``ValueError`` listing the registered names otherwise."""
        try:
            return self._factories[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; the {self.kind}s are: {', '.join(self.names())}") from None

    def options(self, name: str) -> list[str] | None:
        """The keyword options the factory ``name`` accepts; ``None`` when it takes any (``**options``)."""
        parameters = inspect.signature(self.get(name)).parameters.values()
        if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
            return None
        return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def create(self, name: str, **options: Any) -> T:
        """Call the factory ``name`` with ``options``; unknown options raise ``ValueError`` naming the accepted ones."""
        factory = self.get(name)
        accepted = self.options(name)
        unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
        if unknown:
            raise ValueError(
                f"{self.kind} {name!r} does not take {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(accepted or []) or '(none)'}"
            )
        return factory(**options)
