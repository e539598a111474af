"""The importer registry: ``register_importer``, ``create_importer`` and ``list_importers``, as timm's registry works.

An importer turns a model trained elsewhere (an insightface ``backbone.pth``, an AdaFace ``.ckpt``, dlib's ``.dat``)
into :class:`ImportedWeights`: the constructor arguments of a :class:`~lightning_margin.FaceEmbedder`, the file's
tensors under the file's own key names, and the function that names, for each of the embedder's keys, the file's key
that holds it. ``lightning-margin import SOURCE ...``
(:mod:`lightning_margin.importers.cli`) and :meth:`FaceEmbedder.from_import <lightning_margin.FaceEmbedder.from_import>`
dispatch over this registry, so a new source is one registration::

    def add_arguments(parser: argparse.ArgumentParser) -> None:  # the command line: SOURCE's own arguments
        parser.add_argument("checkpoint", help="the model file")
        parser.add_argument("--arch", default="auto", help="...")

    @register_importer("mysource", add_arguments=add_arguments, description="a MySource checkpoint")
    def import_mysource(checkpoint: str, arch: str = "auto") -> ImportedWeights:
        ...  # keyword arguments are the argparse destinations of add_arguments

The command line adds ``OUTPUT_DIR`` after the importer's own positional arguments, calls the function with the
parsed arguments as keywords and writes the embedder folder. This module knows nothing of the embedder class (the
inference layer builds it from :attr:`ImportedWeights.config`), so importers stay below it.
"""

from __future__ import annotations

import argparse
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from lightning_margin.importers._checkpoint import load_checked

__all__ = [
    "ImportedWeights",
    "Importer",
    "create_importer",
    "imported_record",
    "list_importers",
    "register_importer",
]


def _same_key(key: str) -> str:
    return key


@dataclass
class ImportedWeights:
    """What an importer returns: a :class:`~lightning_margin.FaceEmbedder`'s constructor arguments and weights.

    Attributes:
        config: Keyword arguments of ``FaceEmbedder(...)``: backbone, neck, embedding size, input size, channel order,
            normalisation, alignment, and ``training`` with the import's record (:func:`imported_record`).
        weights: The file's tensors under the file's own key names, without what the embedder drops (a
            classification head, optimizer state); an importer may add tensors the file implies (e.g. the unit scale
            of a BatchNorm without affine parameters).
        file: The file the weights came from (named in errors).
        arch: The architecture the weights were read as (``"r50"``, ``"ir_50"``, ...; named in errors).
        source_key: The embedder's key (``backbone.*``, ``neck.*``) -> the key of :attr:`weights` that holds it. The
            identity by default. Errors name the file's keys, which the user can find in the file.
        guess: The architecture the file's shapes point to, when the importer can tell (named in a mismatch error).
    """

    config: dict[str, Any]
    weights: dict[str, Tensor]
    file: str
    arch: str
    source_key: Callable[[str], str] = field(default=_same_key)
    guess: str | None = None

    def load_into(self, model: nn.Module) -> None:
        """Fill ``model`` (the embedder built from :attr:`config`) from :attr:`weights`, strictly; a mismatch raises
        :class:`~lightning_margin.importers.CheckpointMismatchError` listing missing, unexpected and mis-shaped keys
        in the file's names and the architecture the shapes suggest."""
        load_checked(model, self.weights, file=self.file, arch=self.arch, source_key=self.source_key, guess=self.guess)


def imported_record(
    source: str, file: str, arch: str, license: str, *, url: str | None = None, **details: Any
) -> dict[str, Any]:
    """The ``training`` entry of an imported embedder's config: where the weights came from and under what terms.

    The model card shows it, so an exported or published folder keeps saying whose weights these are.

    Example:
        >>> imported_record("insightface", "backbone.pth", "r50", "non-commercial research only")["imported"]["arch"]
        'r50'
    """
    record = {"source": source, "file": file, "arch": arch, "license": license, "url": url, **details}
    return {"imported": {key: value for key, value in record.items() if value is not None}}


@dataclass(frozen=True)
class Importer:
    """A registered importer.

    Attributes:
        name: The ``SOURCE`` of ``lightning-margin import SOURCE``.
        load: ``load(**arguments) -> ImportedWeights``; its keyword arguments are the argparse destinations that
            ``add_arguments`` defines (``output_dir`` excepted).
        add_arguments: Adds the source's own command-line arguments to its sub-parser (before ``OUTPUT_DIR``).
        description: One line for ``lightning-margin import --help``.
    """

    name: str
    load: Callable[..., ImportedWeights]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    description: str


_IMPORTERS: dict[str, Importer] = {}


def register_importer(
    name: str, *, add_arguments: Callable[[argparse.ArgumentParser], None], description: str
) -> Callable[[Callable[..., ImportedWeights]], Callable[..., ImportedWeights]]:
    """Decorator that registers ``load`` as the importer of source ``name`` (a lowercase identifier).

    Example:
        >>> @register_importer("mysource", add_arguments=lambda parser: None, description="...")  # doctest: +SKIP
        ... def import_mysource() -> ImportedWeights: ...
    """
    if name != name.lower() or not name.isidentifier():
        raise ValueError(f"importer names are lowercase identifiers, got {name!r}")

    def decorator(load: Callable[..., ImportedWeights]) -> Callable[..., ImportedWeights]:
        if name in _IMPORTERS and _IMPORTERS[name].load is not load:
            raise ValueError(f"an importer named {name!r} is already registered ({_IMPORTERS[name].load.__qualname__})")
        _IMPORTERS[name] = Importer(name, load, add_arguments, description)
        return load

    return decorator


def list_importers(pattern: str = "*") -> list[str]:
    """Sorted names of the registered importers, optionally filtered by a shell-style ``pattern``.

    Example:
        >>> list_importers("*face")
        ['adaface', 'insightface']
    """
    return sorted(fnmatch.filter(_IMPORTERS, pattern))


def create_importer(name: str) -> Importer:
    """The importer registered as ``name``; ``ValueError`` naming the registered ones otherwise.

    Example:
        >>> create_importer("adaface").name
        'adaface'
        >>> create_importer("facenet")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown import source 'facenet'; available: adaface, dlib, insightface...
    """
    try:
        return _IMPORTERS[name]
    except KeyError:
        raise ValueError(f"unknown import source {name!r}; available: {', '.join(list_importers())}") from None
