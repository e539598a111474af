"""Image decoding shared by every reader: encoded bytes in, an RGB ``uint8`` tensor out.

Every reader (LFW, ImageFolder, RecordIO, verification .bin) hands the raw encoded bytes of one image to
:func:`decode_image` together with a human-readable ``source`` (a file path, or a ``.rec`` file plus record key), so a
bad image is reported with the place it came from instead of an anonymous decoder message.

Pillow decodes (libjpeg-turbo for JPEG; also PNG, WebP, BMP, ...). ``torchvision.io`` image decoding is deprecated
since torchvision 0.29, so it is not used.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = ["CorruptImageError", "center_crop_box", "decode_image", "read_file_bytes", "read_image_file"]


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


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) <= 0:
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of positive ints, got {value!r}")
    return pair  # type: ignore[return-value]


def center_crop_box(width: int, height: int, crop_size: int | Sequence[int]) -> tuple[int, int, int, int]:
    """The ``(left, top, right, bottom)`` box of a centre crop, clamped to the image; offsets round half to even.

    Example:
        >>> center_crop_box(250, 250, 150)
        (50, 50, 200, 200)
    """
    crop_height, crop_width = _pair(crop_size, "crop_size")
    crop_height, crop_width = min(crop_height, height), min(crop_width, width)
    left, top = round((width - crop_width) / 2.0), round((height - crop_height) / 2.0)
    return left, top, left + crop_width, top + crop_height


def decode_image(
    data: bytes | bytearray | memoryview,
    source: str = "<bytes>",
    crop_size: int | Sequence[int] | None = None,
    target_size: int | Sequence[int] | None = None,
) -> Tensor:
    """Decode an encoded image (JPEG, PNG, ...) to an RGB ``uint8`` tensor of shape ``[3, H, W]``.

    Grey-scale, CMYK, palette and RGBA images are converted to RGB so every reader yields the same layout. A truncated
    or corrupt file raises :class:`CorruptImageError` naming ``source``; Pillow's global
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` switch, if another library turned it on, would make truncated JPEGs decode as
    partly grey images, so keep it off.

    Two optional hints make decoding cheaper when the caller will crop and shrink the image anyway (what
    :class:`~lightning_margin.data.transforms.FaceTransform` does):

    * ``crop_size``: the centre crop is cut inside Pillow, before the pixels are copied out. Copying pixels out of
      Pillow costs about as much per pixel as decoding them, so this saves most of the copy (a 150x150 crop of a
      250x250 image copies 36% of the pixels). The result equals cropping the full tensor.
    * ``target_size``: the size the crop will be resized to. When the crop is at least twice that size, a JPEG is
      decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (a proper antialiased reduction) instead of being
      decoded at full size and shrunk afterwards; the crop box scales with it. The result then differs from the
      full-size path by resampling details only.

    Args:
        data: The encoded image bytes.
        source: A description of where the bytes came from, used in error messages.
        crop_size: Centre crop (side, or ``(height, width)``) to cut before extracting pixels; ``None`` for none.
        target_size: Side, or ``(height, width)``, the crop will be resized to; ``None`` disables DCT scaling.

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
            width, height = image.size
            box = center_crop_box(width, height, crop_size) if crop_size is not None else (0, 0, width, height)
            if target_size is not None and image.format == "JPEG":
                target_height, target_width = _pair(target_size, "target_size")
                factor = min((box[2] - box[0]) / target_width, (box[3] - box[1]) / target_height)
                if factor >= 2:
                    # Pillow picks the largest scale 1/s (s in 8, 4, 2) whose result is at least this size.
                    image.draft(image.mode, (math.ceil(width / factor), math.ceil(height / factor)))
                    scale_x, scale_y = image.size[0] / width, image.size[1] / height
                    if (scale_x, scale_y) != (1.0, 1.0):
                        crop = (round((box[3] - box[1]) * scale_y), round((box[2] - box[0]) * scale_x))
                        box = center_crop_box(image.size[0], image.size[1], crop)
            image.load()
            if box != (0, 0, *image.size):
                image = image.crop(box)
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


def read_file_bytes(path: str | Path, source: str | None = None) -> bytes:
    """The bytes of an image file; a missing file raises ``FileNotFoundError`` naming ``source`` (default: the path).

    Example:
        >>> data = read_file_bytes("face.jpg")  # doctest: +SKIP
    """
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path if source is None else source}") from None


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
    return decode_image(read_file_bytes(path, description), description)
