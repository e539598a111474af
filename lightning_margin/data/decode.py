"""Image decoding shared by every reader: encoded bytes in, an RGB ``uint8`` tensor out.

Every reader (LFW, ImageFolder, RecordIO, verification .bin) hands the raw encoded bytes of one image to
:func:`decode_image` together with a human-readable ``source`` (a file path, or a ``.rec`` file plus record key), so a
bad image is reported with the place it came from instead of an anonymous decoder message.

Pillow decodes (libjpeg-turbo for JPEG; also PNG, WebP, BMP, ...). ``torchvision.io`` image decoding is deprecated
since torchvision 0.29, so it is not used.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = ["CorruptImageError", "decode_image", "read_image_file"]


def _silence_read_only_warning() -> None:
    # ``torch.from_numpy`` warns once per process (a C++ "warn once") when given a read-only array. Every decoded
    # image is such an array, by design (see ``decode_image``), so consume that one warning here, at import, instead
    # of wrapping each decode in ``warnings.catch_warnings`` (slow, and not thread-safe).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.from_numpy(np.frombuffer(b"\0", dtype=np.uint8))


_silence_read_only_warning()


class CorruptImageError(ValueError):
    """An image that cannot be decoded (corrupt, truncated, empty or not an image).

    Attributes:
        source: Where the image came from (file path, or ``.rec`` path and record key).
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot decode image {source}: {reason}")
        self.source = source
        self.reason = reason


def decode_image(data: bytes | bytearray | memoryview, source: str = "<bytes>") -> Tensor:
    """Decode an encoded image (JPEG, PNG, ...) to an RGB ``uint8`` tensor of shape ``[3, H, W]``.

    Grey-scale, CMYK, palette and RGBA images are converted to RGB so every reader yields the same layout. A truncated
    or corrupt file raises :class:`CorruptImageError` naming ``source``; Pillow's global
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` switch, if another library turned it on, would make truncated JPEGs decode as
    partly grey images, so keep it off.

    Args:
        data: The encoded image bytes.
        source: A description of where the bytes came from, used in error messages.

    Returns:
        A ``uint8`` tensor ``[3, H, W]`` in RGB order. It is a channels-last view of a fresh ``[H, W, 3]`` array
        (no copy), which is also the fastest layout for the resize in :mod:`lightning_margin.data.transforms`.

    Raises:
        CorruptImageError: if the bytes are empty, not an image, truncated or otherwise undecodable.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> buffer = io.BytesIO()
        >>> Image.new("L", (4, 2), color=7).save(buffer, format="PNG")
        >>> decode_image(buffer.getvalue()).shape
        torch.Size([3, 2, 4])
    """
    if len(data) == 0:
        raise CorruptImageError(source, "the data is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode != "RGB":
                image = image.convert("RGB")
            # ``np.asarray`` copies Pillow's buffer once into a read-only array; ``np.array`` would copy twice.
            pixels = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise CorruptImageError(source, f"{type(error).__name__}: {error}") from error
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise CorruptImageError(source, f"decoded to an array of shape {pixels.shape}, expected (H, W, 3)")
    # The array is read-only (it wraps Pillow's bytes). Nothing here writes into it in place (every transform
    # allocates its output), so sharing it saves a copy; see ``_silence_read_only_warning``.
    return torch.from_numpy(pixels).permute(2, 0, 1)


def read_image_file(path: str | Path, source: str | None = None) -> Tensor:
    """Read and decode one image file; see :func:`decode_image`.

    Args:
        path: The image file.
        source: The description used in errors; defaults to the path (readers add the list file and line).

    Returns:
        An RGB ``uint8`` tensor ``[3, H, W]``.

    Raises:
        FileNotFoundError: if the file does not exist (the message names ``source``).
        CorruptImageError: if it cannot be decoded.

    Example:
        >>> read_image_file("face.jpg").dtype  # doctest: +SKIP
        torch.uint8
    """
    description = str(path) if source is None else source
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"image file not found: {description}") from error
    return decode_image(data, description)
