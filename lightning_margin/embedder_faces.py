"""Photos to aligned faces for :class:`~lightning_margin.FaceEmbedder`: ``embed(images, align=...)`` and
``embed_faces``.

A model trained on aligned faces (the ArcFace 112x112 crops of the field, or ``lfw_aligned``) must see aligned faces:
:func:`aligned_crops` detects the face of each photo (the largest, when there are several) or takes the landmarks the
caller gives, and warps it with the alignment the model's ``config.json`` records (``"arcface"`` unless it records
another); the embedder then resizes the crop to its input size and normalises it, without a centre crop.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from torch import Tensor

from lightning_margin._validation import check_choice
from lightning_margin.align import DetectedFace, FaceDetector, create_alignment, select_face
from lightning_margin.align.transform import image_tensor
from lightning_margin.images import ImageInput

__all__ = [
    "DEFAULT_ALIGNMENT",
    "MISSING_FACE",
    "EmbeddedFace",
    "aligned_crops",
    "default_detector",
    "every_face",
    "named_images",
]

#: The alignment of models whose config records none, when the caller asks for alignment.
DEFAULT_ALIGNMENT = "arcface"
#: What ``embed`` does with a photo without a face: raise, or leave it out with a warning.
MISSING_FACE = ("error", "skip")


@dataclass(frozen=True, eq=False)
class EmbeddedFace:
    """One face of a photo and its embedding (:meth:`~lightning_margin.FaceEmbedder.embed_faces`).

    Attributes:
        box: ``(x1, y1, x2, y2)`` of the detection.
        score: The detector's confidence.
        landmarks: The five landmarks ``(5, 2)`` it was aligned with.
        embedding: Unit-norm ``[embedding_size]``.
    """

    box: tuple[float, float, float, float] | None
    score: float | None
    landmarks: np.ndarray
    embedding: Tensor


@lru_cache(maxsize=1)
def default_detector() -> FaceDetector:
    """The detector ``embed(align=True)`` uses when given none: dlib's (HOG, CNN fallback), built once."""
    return FaceDetector("dlib")


def named_images(images: ImageInput) -> list[tuple[Tensor, str]]:
    """Each image as an RGB ``uint8`` tensor ``[3, H, W]`` with a name for messages: its position, and its file name
    when it is a PIL image opened from a file.

    Example:
        >>> import torch
        >>> [name for _, name in named_images([torch.zeros(2, 3, 4, 4), torch.zeros(3, 4, 4)])]
        ['image 0', 'image 1', 'image 2']
    """
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    named: list[tuple[Tensor, str]] = []
    for item in items:
        if isinstance(item, Tensor) and item.ndim == 4:
            named.extend((image_tensor(image), f"image {len(named)}") for image in item.unbind(0))
            continue
        filename = getattr(item, "filename", "")
        named.append((image_tensor(item), f"image {len(named)}" + (f" ({filename})" if filename else "")))
    if not named:
        raise ValueError("`images` is empty")
    return named


def _given_landmarks(align: Any, count: int) -> list[DetectedFace]:
    try:
        array = np.asarray(align.detach().cpu() if isinstance(align, Tensor) else align, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is not None and array.shape == (5, 2):
        array = array[None]  # one image's landmarks
    if array is None or array.ndim != 3 or array.shape[0] != count:
        received = f"shape {array.shape}" if array is not None else type(align).__name__
        raise ValueError(
            f"`align` must be True, False, None or the (5, 2) landmarks of each of the {count} image(s); got {received}"
        )
    return [DetectedFace.from_landmarks(points) for points in array]


def aligned_crops(
    images: ImageInput,
    alignment: str | None,
    align: bool | Sequence[Any] | np.ndarray | Tensor,
    detector: FaceDetector | None = None,
    on_missing: Literal["error", "skip"] = "error",
) -> tuple[list[Tensor], list[int]]:
    """The aligned face crops of photos, and the positions of the photos they come from.

    Args:
        images: What :meth:`~lightning_margin.FaceEmbedder.embed` takes.
        alignment: The model's recorded alignment (``None``: :data:`DEFAULT_ALIGNMENT`).
        align: ``True``: detect, keep the largest face; or the landmarks ``(5, 2)`` of each image, in order.
        detector: The detector (``None``: :func:`default_detector`).
        on_missing: A photo without a face raises ``ValueError`` naming it (``"error"``), or is left out with a
            warning naming it (``"skip"``).

    Returns:
        ``(crops, kept)``: RGB ``uint8`` crops ``[3, S, S]`` (S: the alignment's size) and the index of each one's
        photo.

    Example:
        >>> import torch
        >>> from lightning_margin.align import ARCFACE_TEMPLATE
        >>> crops, kept = aligned_crops(torch.zeros(1, 3, 200, 200), None, [ARCFACE_TEMPLATE + 40])
        >>> crops[0].shape, kept
        (torch.Size([3, 112, 112]), [0])
    """
    check_choice("on_missing", on_missing, MISSING_FACE)
    named = named_images(images)
    crop = create_alignment(alignment or DEFAULT_ALIGNMENT)
    if isinstance(align, bool):
        if not align:
            raise ValueError("aligned_crops needs align=True or landmarks")
        finder = detector or default_detector()
        faces = [select_face(finder(image), "largest") for image, _ in named]
    else:
        faces = _given_landmarks(align, len(named))
    missing = [name for (_, name), face in zip(named, faces, strict=True) if face is None]
    if missing and on_missing == "error":
        raise ValueError(f"no face found in {', '.join(missing)} (embed(..., on_missing='skip') leaves them out)")
    if missing:
        warnings.warn(f"no face found in {', '.join(missing)}: left out of the embeddings", UserWarning, stacklevel=3)
    kept = [index for index, face in enumerate(faces) if face is not None]
    return [crop(named[index][0], faces[index]) for index in kept], kept  # type: ignore[arg-type]


def every_face(
    image: Any, alignment: str | None, detector: FaceDetector | None = None
) -> tuple[list[DetectedFace], list[Tensor]]:
    """Every face of one photo, most confident first, and its aligned crop (``[3, S, S]`` ``uint8``).

    Example:
        >>> faces, crops = every_face(Image.open("group.jpg"), "arcface")  # doctest: +SKIP
        >>> len(faces) == len(crops)  # doctest: +SKIP
        True
    """
    pixels = image_tensor(image)
    faces = (detector or default_detector())(pixels)
    crop = create_alignment(alignment or DEFAULT_ALIGNMENT)
    return faces, [crop(pixels, face) for face in faces]
