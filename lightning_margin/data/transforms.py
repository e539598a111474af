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

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as functional
from torch import Tensor

from lightning_margin.data.decode import _pair, center_crop_box, decode_image

__all__ = [
    "LFW_CROP_SIZE",
    "FaceTransform",
    "center_crop",
    "decode_and_transform",
    "horizontal_flip",
    "normalize",
    "normalize_batch",
    "preprocess_face",
    "random_shift",
    "resize",
]

#: Centre crop (pixels) applied to LFW deep-funneled 250x250 images before resizing: the face with some margin.
LFW_CROP_SIZE = 150


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
    left, top, right, bottom = center_crop_box(image.shape[-1], image.shape[-2], crop_size)
    return image[..., top:bottom, left:right]


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
    if batch.dtype == torch.uint8:
        # torch's vectorised uint8 kernel wants dense channels-last memory; a crop of a decoded image is
        # channels-last but strided, and would otherwise go through a much slower planar path.
        batch = batch.contiguous(memory_format=torch.channels_last)
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

    With the defaults (the insightface convention) 0 maps to exactly -1 and 255 to exactly +1. Computed as
    ``(image - 255 * mean) * (1 / (255 * std))``; the output keeps the input's memory layout (a decoded image is
    channels-last; ``default_collate``'s stack then builds a contiguous batch, doing the layout change once, in the
    copy it makes anyway).

    Args:
        image: A ``uint8`` tensor ``[3, H, W]`` (values 0..255).
        mean: Per-channel mean, in units of the ``[0, 1]`` range.
        std: Per-channel standard deviation, in the same units.

    Returns:
        A ``float32`` tensor ``[3, H, W]``.

    Example:
        >>> normalize(torch.tensor([[[0, 255]]] * 3, dtype=torch.uint8))[0]
        tensor([[-1.,  1.]])
    """
    if len(mean) != image.shape[0] or len(std) != image.shape[0]:
        raise ValueError(f"mean and std need one value per channel ({image.shape[0]}), got {mean!r} and {std!r}")
    if any(value <= 0 for value in std):
        raise ValueError(f"std must be positive, got {std!r}")
    return _affine(image, *_affine_parameters(mean, std, image.device))


def _affine_parameters(
    mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"
) -> tuple[float | Tensor, float | Tensor]:
    """``(offset, scale)`` with ``normalize(x) = (x - offset) * scale``; plain floats when all channels agree."""
    if len(set(mean)) == 1 and len(set(std)) == 1:
        return 255.0 * mean[0], 1.0 / (255.0 * std[0])
    offset = torch.tensor([255.0 * m for m in mean], device=device).view(-1, 1, 1)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(-1, 1, 1)
    return offset, scale


def _affine(image: Tensor, offset: float | Tensor, scale: float | Tensor) -> Tensor:
    # Subtracting first keeps the endpoints exact (0 and 255 map to exactly -1 and +1 with the defaults; one fused
    # multiply-add would give 1.0000001). The subtraction promotes uint8 to float32 and keeps the memory layout.
    return torch.sub(image, offset).mul_(scale)


def normalize_batch(
    images: Tensor,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    flip_probability: float = 0.0,
) -> Tensor:
    """:func:`normalize` and random mirroring for a whole ``uint8`` batch ``[B, 3, H, W]``, on its device.

    What :class:`FaceTransform` does per image, done once per batch after the host-to-device copy: the loader
    workers then only decode, crop and resize, and ship ``uint8`` (a quarter of the bytes of float32). Each image
    is mirrored with probability ``flip_probability`` (torch's global RNG on the batch's device).

    Example:
        >>> normalize_batch(torch.tensor([[[[0, 255]]] * 3], dtype=torch.uint8))[0, 0]
        tensor([[-1.,  1.]])
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"normalize_batch expects uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    if flip_probability > 0:
        flip = torch.rand(images.shape[0], device=images.device) < flip_probability
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    offset, scale = _affine_parameters(mean, std, images.device)
    return _affine(images, offset, scale)


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Translate each image of a batch by its own random offset of up to ``max_shift`` pixels, edges replicated.

    The "random crop with padding" augmentation (Krizhevsky et al. 2012; CIFAR-style training), for faces whose
    alignment is only approximate (LFW's deep-funneled crops move by a few pixels from image to image): training on
    shifted copies makes the embedding tolerate that jitter. Offsets are uniform integers in ``[-max_shift,
    max_shift]`` for rows and columns independently; pixels shifted in from outside repeat the border (replicate
    padding), so no black bars appear. Works on any dtype and device, on ``[B, C, H, W]``.

    Args:
        images: A batch ``[B, C, H, W]``.
        max_shift: Largest offset in pixels; 0 returns ``images`` unchanged.
        generator: The random generator (``None``: torch's global one on the batch's device).

    Example:
        >>> batch = torch.arange(16.0).view(1, 1, 4, 4)
        >>> random_shift(batch, 1).shape
        torch.Size([1, 1, 4, 4])
    """
    if images.ndim != 4:
        raise ValueError(f"random_shift expects a batch [B, C, H, W], got shape {tuple(images.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return images
    batch, _, height, width = images.shape
    device = images.device
    draw_on = generator.device if generator is not None else device
    offsets = torch.randint(-max_shift, max_shift + 1, (2, batch, 1), generator=generator, device=draw_on).to(device)
    # Clamping the source index is replicate padding without materialising a padded copy.
    rows = (torch.arange(height, device=device) + offsets[0]).clamp_(0, height - 1)
    cols = (torch.arange(width, device=device) + offsets[1]).clamp_(0, width - 1)
    index = torch.arange(batch, device=device)[:, None, None]
    return images[index, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


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
        A ``float32`` tensor ``[3, *image_size]``.

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

    Call it on a decoded RGB ``uint8`` tensor, or let a reader call :meth:`from_bytes` on the encoded image (every
    reader in :mod:`lightning_margin.data` does, through :func:`decode_and_transform`): that crops inside the decoder,
    which is cheaper, and gives the same result up to resampling details.

    Args:
        image_size: The backbone's input side, or ``(height, width)``.
        crop_size: Centre crop before resizing (:data:`LFW_CROP_SIZE` for LFW deep-funneled), ``None`` for none.
        mean: Per-channel mean in ``[0, 1]`` units (see :func:`normalize`).
        std: Per-channel standard deviation in ``[0, 1]`` units.
        flip_probability: Probability of mirroring each image (0.5 for training, 0 for evaluation).
        normalize: Return float ``[-1, 1]`` images; ``False`` returns the resized ``uint8`` image, to be normalised
            per batch on the device by :func:`normalize_batch` (4x less to collate, pin and copy).

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
        normalize: bool = True,
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
        self.normalize = bool(normalize)
        self._offset, self._scale = _affine_parameters(self.mean, self.std)

    def _finish(self, image: Tensor) -> Tensor:
        image = resize(image, self.image_size)
        # torch's RNG: DataLoader seeds it differently in every worker, so flips are not repeated across workers.
        if self.flip_probability > 0 and torch.rand(()).item() < self.flip_probability:
            image = horizontal_flip(image)
        return _affine(image, self._offset, self._scale) if self.normalize else image

    def __call__(self, image: Tensor) -> Tensor:
        if self.crop_size is not None:
            image = center_crop(image, self.crop_size)
        return self._finish(image)

    def from_bytes(self, data: bytes | bytearray | memoryview, source: str = "<bytes>") -> Tensor:
        """Decode an encoded image and preprocess it, cropping (and, for JPEG, downscaling) inside the decoder.

        Example:
            >>> FaceTransform(112, crop_size=150).from_bytes(open("face.jpg", "rb").read())  # doctest: +SKIP
        """
        return self._finish(decode_image(data, source, crop_size=self.crop_size, target_size=self.image_size))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, crop_size={self.crop_size}, mean={self.mean}, "
            f"std={self.std}, flip_probability={self.flip_probability}, normalize={self.normalize})"
        )


def decode_and_transform(
    data: bytes | bytearray | memoryview, source: str, transform: Callable[[Tensor], Any] | None
) -> Any:
    """Decode an encoded image and apply a dataset's ``transform``: what every reader does per item.

    A transform with a ``from_bytes(data, source)`` method (such as :class:`FaceTransform`) receives the encoded bytes
    and decodes them itself, which lets it crop inside the decoder; any other callable receives the decoded RGB
    ``uint8`` tensor ``[3, H, W]``.

    Args:
        data: The encoded image.
        source: Where it came from, for error messages.
        transform: The dataset's transform, or ``None`` for the decoded tensor.

    Example:
        >>> decode_and_transform(jpeg_bytes, "face.jpg", FaceTransform(112))  # doctest: +SKIP
    """
    from_bytes = getattr(transform, "from_bytes", None)
    if from_bytes is not None:
        return from_bytes(data, source)
    image = decode_image(data, source)
    return image if transform is None else transform(image)
