"""A tiny synthetic identity set generated in memory: smoke tests and a quick start with no download.

Each identity is a random smooth, left-right symmetric "prototype" image (low-frequency noise upsampled, mirrored
like a face); each sample is its prototype shifted by a few pixels, with a random brightness change and pixel noise.
Identities are therefore learnable but not trivially (shift and noise must be ignored), flips preserve identity as
they do for faces, and everything is a pure function of ``(seed, index)``: the same in every DataLoader worker and
every run, with nothing stored but the tiny low-resolution prototypes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as functional
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["SyntheticFaces", "SyntheticPairs", "synthetic_face"]

# Side of the random grid each prototype is upsampled from: sets how smooth (low-frequency) the identities are.
_PROTOTYPE_GRID = 6


def _generator(*seeds: int) -> torch.Generator:
    # Mix the integers into one 63-bit seed (a fixed odd multiplier keeps (seed, index) pairs apart).
    value = 0
    for seed in seeds:
        value = (value * 1_000_003 + int(seed) + 0x9E3779B9) % (1 << 63)
    return torch.Generator().manual_seed(value)


def _prototype_grid(seed: int, identity: int) -> Tensor:
    grid = torch.randn(3, _PROTOTYPE_GRID, _PROTOTYPE_GRID, generator=_generator(seed, identity, 0))
    return (grid + grid.flip(-1)) / 2  # mirror-symmetric, like a frontal face


def synthetic_face(
    seed: int,
    identity: int,
    sample: int,
    image_size: int | Sequence[int] = 112,
    max_shift: float = 0.04,
    noise: float = 0.05,
) -> Tensor:
    """One synthetic face: identity ``identity``'s prototype, shifted, re-lit and noised, as RGB ``uint8``.

    Args:
        seed: Selects the family of identities (different seeds give unrelated identities).
        identity: The identity number.
        sample: The sample number within the identity (each gives a different shift and noise).
        image_size: Output side, or ``(height, width)``.
        max_shift: Largest shift, each axis, as a fraction of the image side (0.04: 4 px at 112).
        noise: Standard deviation of the pixel noise, as a fraction of the 0..255 range.

    Returns:
        A ``uint8`` tensor ``[3, H, W]``.

    Example:
        >>> synthetic_face(seed=0, identity=3, sample=0, image_size=32).shape
        torch.Size([3, 32, 32])
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    shift = round(max_shift * min(height, width))
    grid = _prototype_grid(seed, identity)
    generator = _generator(seed, identity, sample + 1)
    # Upsample with a margin of `shift` pixels, then cut a shifted window: a translation without wrap-around.
    padded = functional.interpolate(
        grid.unsqueeze(0), size=(height + 2 * shift, width + 2 * shift), mode="bicubic", align_corners=False
    ).squeeze(0)
    padded = (padded - padded.mean()) / padded.std().clamp_min(1e-6)  # the same contrast for every identity
    top, left = torch.randint(0, 2 * shift + 1, (2,), generator=generator).tolist()
    face = padded[:, top : top + height, left : left + width]
    brightness = 0.05 * torch.randn((), generator=generator)
    face = 0.5 + 0.2 * face + brightness + noise * torch.randn(face.shape, generator=generator)
    return (face * 255).round_().clamp_(0, 255).to(torch.uint8)


class SyntheticFaces(Dataset):
    """A small in-memory identity set for smoke tests and a download-free quick start.

    Items are ``(image, label)``: an RGB ``uint8`` tensor ``[3, H, W]`` (or ``transform`` of it) and ``label =
    index // images_per_class``. Deterministic in ``seed``.

    Args:
        num_classes: Number of identities.
        images_per_class: Samples per identity.
        image_size: Image side, or ``(height, width)``.
        seed: Selects the identities; :class:`SyntheticPairs` uses a different default so that its identities are
            unseen in training, like a real open-set verification benchmark.
        max_shift: Largest random shift, as a fraction of the image side.
        noise: Pixel noise standard deviation, as a fraction of 0..255.
        transform: Applied to each image.

    Example:
        >>> faces = SyntheticFaces(num_classes=4, images_per_class=3, image_size=32)
        >>> image, label = faces[7]
        >>> len(faces), faces.num_classes, tuple(image.shape), label
        (12, 4, (3, 32, 32), 2)
    """

    def __init__(
        self,
        num_classes: int = 10,
        images_per_class: int = 16,
        image_size: int | Sequence[int] = 112,
        seed: int = 0,
        max_shift: float = 0.04,
        noise: float = 0.05,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if num_classes < 1 or images_per_class < 1:
            raise ValueError(f"num_classes and images_per_class must be >= 1, got {num_classes} and {images_per_class}")
        if max_shift < 0 or noise < 0:
            raise ValueError(f"max_shift and noise must be >= 0, got {max_shift} and {noise}")
        self.num_classes = num_classes
        self.images_per_class = images_per_class
        self.image_size = image_size
        self.seed = seed
        self.max_shift = max_shift
        self.noise = noise
        self.transform = transform

    def __len__(self) -> int:
        return self.num_classes * self.images_per_class

    def image(self, identity: int, sample: int) -> Tensor:
        """Sample ``sample`` of identity ``identity`` (before ``transform``)."""
        return synthetic_face(self.seed, identity, sample, self.image_size, self.max_shift, self.noise)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        label, sample = divmod(index, self.images_per_class)
        image = self.image(label, sample)
        return (image if self.transform is None else self.transform(image)), label

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, images_per_class={self.images_per_class}, "
            f"image_size={self.image_size}, seed={self.seed})"
        )


class SyntheticPairs(Dataset):
    """Synthetic verification pairs, items like :class:`~lightning_margin.data.lfw.LFWPairs`.

    Even-numbered pairs show the same identity (two different samples), odd-numbered pairs two different identities.
    Identities come from ``seed`` (default 1, unlike :class:`SyntheticFaces`' 0): unseen in training.

    Args:
        num_pairs: Number of pairs.
        num_classes: Number of identities pairs are drawn from (at least 2).
        image_size: Image side, or ``(height, width)``.
        seed: Selects identities and pairings.
        max_shift: Largest random shift, as a fraction of the image side.
        noise: Pixel noise standard deviation, as a fraction of 0..255.
        transform: Applied to each image.

    Attributes:
        issame: One bool per pair.
        fold: 10 consecutive folds (``pair * 10 // num_pairs``), like LFW View 2.

    Example:
        >>> pairs = SyntheticPairs(num_pairs=20, image_size=32)
        >>> image1, image2, issame = pairs[0]
        >>> issame, pairs.issame[1], pairs.fold[-1]
        (True, False, 9)
    """

    def __init__(
        self,
        num_pairs: int = 200,
        num_classes: int = 20,
        image_size: int | Sequence[int] = 112,
        seed: int = 1,
        max_shift: float = 0.04,
        noise: float = 0.05,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if num_pairs < 1 or num_classes < 2:
            raise ValueError(f"num_pairs must be >= 1 and num_classes >= 2, got {num_pairs} and {num_classes}")
        self.faces = SyntheticFaces(num_classes, 1, image_size, seed, max_shift, noise)
        self.transform = transform
        generator = _generator(seed, -1)
        self._pairs: list[tuple[int, int, int, int]] = []
        for pair in range(num_pairs):
            first = int(torch.randint(0, num_classes, (), generator=generator))
            if pair % 2 == 0:
                self._pairs.append((first, 2 * pair, first, 2 * pair + 1))
            else:
                other = (first + int(torch.randint(1, num_classes, (), generator=generator))) % num_classes
                self._pairs.append((first, 2 * pair, other, 2 * pair + 1))
        self.issame = [pair % 2 == 0 for pair in range(num_pairs)]
        self.fold = [pair * 10 // num_pairs for pair in range(num_pairs)]

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> tuple[Any, Any, bool]:
        identity1, sample1, identity2, sample2 = self._pairs[index]
        images = [self.faces.image(identity1, sample1), self.faces.image(identity2, sample2)]
        if self.transform is not None:
            images = [self.transform(image) for image in images]
        return images[0], images[1], self.issame[index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_pairs={len(self)}, seed={self.faces.seed})"
