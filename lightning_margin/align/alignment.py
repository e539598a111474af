"""Alignments: how a detected face becomes the crop a model takes, by name (``"arcface"``).

An alignment is registered as a factory taking the crop side ``image_size`` (and any options of its own) and
returning the function that crops: ``align(image, face) -> crop``, with ``image`` an RGB ``uint8`` tensor
``[3, H, W]``, ``face`` a :class:`~lightning_margin.align.detect.DetectedFace` and ``crop`` an RGB ``uint8`` tensor
``[3, image_size, image_size]``. The factory checks ``image_size`` once, so a bad size fails before any image is
read. A model's ``config.json`` records the alignment its training crops were made with by this name (see
:class:`~lightning_margin.FaceEmbedder`), and ``lightning-margin data align --alignment NAME`` makes crops with it.

The registered alignments:

* ``"arcface"`` (default size 112): :func:`~lightning_margin.align.transform.norm_crop`'s warp of the five landmarks
  onto the ArcFace template.
* ``"dlib_chip"`` (default size 150): dlib's face chip (:mod:`~lightning_margin.align.dlib_chip`).

A new alignment is one module with one registered factory, imported by ``lightning_margin/align/__init__.py``::

    @register_alignment("my_chip")
    def my_chip(image_size: int = 150, padding: float = 0.25) -> AlignFunction:
        ...  # check the options
        def align(image: Tensor, face: DetectedFace) -> Tensor:
            ...  # face.points holds the detector's own landmarks (dlib: 68)
        return align
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import Tensor

from lightning_margin.align._registry import Registry
from lightning_margin.align.detect import DetectedFace
from lightning_margin.align.transform import ARCFACE_SIZE, arcface_template, similarity_transform, warp_affine

__all__ = ["AlignFunction", "alignment_size", "create_alignment", "list_alignments", "register_alignment"]

#: ``align(image, face) -> crop``: RGB ``uint8`` tensors ``[3, H, W]`` in and out.
AlignFunction = Callable[[Tensor, DetectedFace], Tensor]

_ALIGNMENTS: Registry[AlignFunction] = Registry("alignment")


def register_alignment(name: str) -> Callable[[Any], Any]:
    """Decorator registering an alignment factory ``factory(image_size=..., **options) -> AlignFunction``.

    Example:
        >>> @register_alignment("my_chip")  # doctest: +SKIP
        ... def my_chip(image_size: int = 150) -> AlignFunction: ...
    """
    return _ALIGNMENTS.register(name)


def list_alignments(pattern: str = "*") -> list[str]:
    """Sorted names of the registered alignments.

    Example:
        >>> "arcface" in list_alignments()
        True
    """
    return _ALIGNMENTS.names(pattern)


def create_alignment(name: str, image_size: int | None = None, **options: Any) -> AlignFunction:
    """The crop function of the alignment ``name`` for crops of side ``image_size`` (``None``: its default).

    Raises:
        ValueError: for an unknown name (listing the registered ones), an unknown option, or a size the alignment
            cannot make.

    Example:
        >>> import torch
        >>> from lightning_margin.align.transform import ARCFACE_TEMPLATE
        >>> align = create_alignment("arcface")
        >>> align(torch.zeros(3, 250, 250, dtype=torch.uint8), DetectedFace.from_landmarks(ARCFACE_TEMPLATE)).shape
        torch.Size([3, 112, 112])
    """
    if image_size is not None:
        options["image_size"] = image_size
    return _ALIGNMENTS.create(name, **options)


def alignment_size(name: str) -> int:
    """The default crop side of the alignment ``name``: what :class:`~lightning_margin.FaceEmbedder` warps to before
    resizing to its input size.

    Example:
        >>> alignment_size("arcface")
        112
    """
    parameter = inspect.signature(_ALIGNMENTS.get(name)).parameters.get("image_size")
    if parameter is None or not isinstance(parameter.default, int):
        raise ValueError(f"alignment {name!r}'s factory needs an `image_size: int = DEFAULT` argument")
    return parameter.default


@register_alignment("arcface")
def arcface(image_size: int = ARCFACE_SIZE) -> AlignFunction:
    """The ArcFace alignment: the five landmarks warped onto the template of an ``image_size`` crop (a multiple of 112
    or 128), bilinear, black border: insightface's ``norm_crop``.

    Example:
        >>> arcface(100)
        Traceback (most recent call last):
        ...
        ValueError: the ArcFace crop size must be a multiple of 112 or of 128, got 100
    """
    arcface_template(image_size)

    def align(image: Tensor, face: DetectedFace) -> Tensor:
        return warp_affine(image, similarity_transform(face.landmarks, image_size), image_size)

    return align
