"""Face preprocessing: centre crop, resize, horizontal flip and normalisation to ``[-1, 1]``.

The functional core (:func:`center_crop`, :func:`resize`, :func:`normalize`, :func:`preprocess_face`) works on the RGB
``uint8`` tensors ``[3, H, W]`` that every reader returns; :class:`FaceTransform` holds the settings and the random
flip and is what the datasets' ``transform`` argument receives.

Why a centre crop: LFW deep-funneled images are 250x250 with the face in the centre. LFW's README says each image is
the Viola-Jones detection enlarged by 2.2 in each dimension, so the face box is about 250 / 2.2 = 114 px. A 150 px
centre crop (:data:`LFW_CROP_SIZE`) keeps the face with a margin comparable to the 112x112 ArcFace alignment crops that
face backbones expect; aligned sets (RecordIO, .bin) are already cropped and need none.

Why ``[-1, 1]``: the insightface/ArcFace convention, ``(pixel / 255 - 0.5) / 0.5``, is what pretrained face
backbones were trained with; ``mean`` and ``std`` make other conventions (e.g. ImageNet's) one setting away.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as functional
from torch import Tensor

__all__ = [
    "LFW_CROP_SIZE",
    "FaceTransform",
    "center_crop",
    "horizontal_flip",
    "normalize",
    "preprocess_face",
    "resize",
]

#: Centre crop (pixels) applied to LFW deep-funneled 250x250 images before resizing: the face with some margin.
LFW_CROP_SIZE = 150


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``112`` -> ``(112, 112)``; ``(112, 96)`` stays ``(height, width)``; validates positivity."""
    pair = (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) <= 0:
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of positive ints, got {value!r}")
    return pair  # type: ignore[return-value]


def center_crop(image: Tensor, crop_size: int | Sequence[int]) -> Tensor:
    """Cut the central ``crop_size`` region of an image ``[..., H, W]`` (a view, no copy).

    A crop larger than the image is clamped to the image, so small images pass through whole instead of being padded
    with invented pixels. The offset rounds like ``torchvision.transforms.functional.center_crop``.

    Args:
        image: A tensor ``[..., H, W]``.
        crop_size: Side of a square crop, or ``(height, width)``.

    Returns:
        A view ``[..., min(H, crop_h), min(W, crop_w)]``.

    Example:
        >>> center_crop(torch.arange(16).reshape(1, 4, 4), 2)
        tensor([[[ 5,  6],
                 [ 9, 10]]])
    """
    crop_height, crop_width = _pair(crop_size, "crop_size")
    height, width = image.shape[-2:]
    crop_height, crop_width = min(crop_height, height), min(crop_width, width)
    top = round((height - crop_height) / 2.0)
    left = round((width - crop_width) / 2.0)
    return image[..., top : top + crop_height, left : left + crop_width]


def resize(image: Tensor, size: int | Sequence[int]) -> Tensor:
    """Resize an image ``[C, H, W]`` to ``size`` with antialiased bilinear interpolation (Pillow's quality).

    ``uint8`` images stay ``uint8`` (torch has a fast vectorised CPU path for them, fastest on channels-last
    memory, which is the layout :func:`~lightning_margin.data.decode.decode_image` produces). An image already of
    that size is returned unchanged.

    Args:
        image: A tensor ``[C, H, W]``, ``uint8`` or floating point.
        size: Side of a square output, or ``(height, width)``.

    Returns:
        The resized ``[C, height, width]`` tensor, same dtype.

    Example:
        >>> resize(torch.zeros(3, 250, 250, dtype=torch.uint8), 112).shape
        torch.Size([3, 112, 112])
    """
    height, width = _pair(size, "size")
    if tuple(image.shape[-2:]) == (height, width):
        return image
    batch = image.unsqueeze(0)
    if batch.dtype == torch.uint8 and batch.device.type != "cpu":
        # The antialiased uint8 kernel exists on CPU only.
        return resize(image.float(), size).round_().clamp_(0, 255).to(torch.uint8)
    resized = functional.interpolate(batch, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return resized.squeeze(0)


def horizontal_flip(image: Tensor) -> Tensor:
    """Mirror an image ``[..., H, W]`` left-right (a face's identity does not change when mirrored).

    Example:
        >>> horizontal_flip(torch.tensor([[[1, 2, 3]]]))
        tensor([[[3, 2, 1]]])
    """
    return image.flip(-1)


def normalize(
    image: Tensor,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> Tensor:
    """Map a ``uint8`` RGB image to ``float32``: ``(image / 255 - mean) / std`` per channel.

    With the defaults (the insightface convention) 0 maps to -1 and 255 to +1. The output is a fresh contiguous
    ``float32`` tensor whatever the input's memory layout.

    Args:
        image: A ``uint8`` tensor ``[3, H, W]`` (values 0..255).
        mean: Per-channel mean, in units of the ``[0, 1]`` range.
        std: Per-channel standard deviation, in the same units.

    Returns:
        A contiguous ``float32`` tensor ``[3, H, W]``.

    Example:
        >>> normalize(torch.tensor([[[0, 255]]] * 3, dtype=torch.uint8))[0]
        tensor([[-1.,  1.]])
    """
    if len(mean) != image.shape[0] or len(std) != image.shape[0]:
        raise ValueError(f"mean and std need one value per channel ({image.shape[0]}), got {mean!r} and {std!r}")
    if any(value <= 0 for value in std):
        raise ValueError(f"std must be positive, got {std!r}")
    output = torch.empty(image.shape, dtype=torch.float32, device=image.device)
    output.copy_(image)  # one pass: dtype conversion and layout change to contiguous together
    if len(set(mean)) == 1 and len(set(std)) == 1:
        # Scalars avoid broadcasting per-channel tensors: the common [-1, 1] case is two cheap in-place passes.
        return output.mul_(1.0 / (255.0 * std[0])).sub_(mean[0] / std[0])
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=image.device).view(-1, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)], device=image.device).view(-1, 1, 1)
    return output.mul_(scale).sub_(shift)


def preprocess_face(
    image: Tensor,
    image_size: int | Sequence[int],
    crop_size: int | Sequence[int] | None = None,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    flip: bool = False,
) -> Tensor:
    """Centre crop, resize, optionally mirror, and normalise one face image.

    Args:
        image: An RGB ``uint8`` tensor ``[3, H, W]`` as the readers return.
        image_size: The backbone's input side, or ``(height, width)``.
        crop_size: Centre crop taken before resizing (e.g. :data:`LFW_CROP_SIZE`), or ``None`` for none.
        mean: See :func:`normalize`.
        std: See :func:`normalize`.
        flip: Mirror the image left-right.

    Returns:
        A contiguous ``float32`` tensor ``[3, *image_size]``.

    Example:
        >>> face = torch.full((3, 250, 250), 255, dtype=torch.uint8)
        >>> out = preprocess_face(face, 112, crop_size=LFW_CROP_SIZE)
        >>> out.shape, out.min().item(), out.max().item()
        (torch.Size([3, 112, 112]), 1.0, 1.0)
    """
    if crop_size is not None:
        image = center_crop(image, crop_size)
    image = resize(image, image_size)
    if flip:
        image = horizontal_flip(image)
    return normalize(image, mean, std)


class FaceTransform:
    """Face preprocessing as a dataset ``transform``: centre crop, resize, random mirror, normalise to ``[-1, 1]``.

    Args:
        image_size: The backbone's input side, or ``(height, width)``.
        crop_size: Centre crop before resizing (:data:`LFW_CROP_SIZE` for LFW deep-funneled), ``None`` for none.
        mean: Per-channel mean in ``[0, 1]`` units (see :func:`normalize`).
        std: Per-channel standard deviation in ``[0, 1]`` units.
        flip_probability: Probability of mirroring each image (0.5 for training, 0 for evaluation).

    Example:
        >>> transform = FaceTransform(image_size=112, crop_size=LFW_CROP_SIZE, flip_probability=0.5)
        >>> transform(torch.zeros(3, 250, 250, dtype=torch.uint8)).shape
        torch.Size([3, 112, 112])
    """

    def __init__(
        self,
        image_size: int | Sequence[int] = 112,
        crop_size: int | Sequence[int] | None = None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        flip_probability: float = 0.0,
    ) -> None:
        self.image_size = _pair(image_size, "image_size")
        self.crop_size = None if crop_size is None else _pair(crop_size, "crop_size")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (R, G, B), got {mean!r} and {std!r}")
        if any(value <= 0 for value in std):
            raise ValueError(f"std values must be positive, got {std!r}")
        if not 0.0 <= flip_probability <= 1.0:
            raise ValueError(f"flip_probability must be in [0, 1], got {flip_probability}")
        self.mean = tuple(float(value) for value in mean)
        self.std = tuple(float(value) for value in std)
        self.flip_probability = float(flip_probability)

    def __call__(self, image: Tensor) -> Tensor:
        # torch's RNG: DataLoader seeds it differently in every worker, so flips are not repeated across workers.
        flip = self.flip_probability > 0 and torch.rand(()).item() < self.flip_probability
        return preprocess_face(image, self.image_size, self.crop_size, self.mean, self.std, flip=flip)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, crop_size={self.crop_size}, mean={self.mean}, "
            f"std={self.std}, flip_probability={self.flip_probability})"
        )
