"""Turn what users pass as face images (PIL images, tensors, lists of either) into a list of RGB image tensors.

:meth:`~lightning_margin.FaceEmbedder.preprocess` takes its input through :func:`to_image_tensors`, so one place says
which inputs are accepted and what their values mean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["ImageInput", "to_image_tensors"]

#: What :meth:`~lightning_margin.FaceEmbedder.embed` accepts: one image or a batch, as PIL images or tensors.
ImageInput = Any  # "Image.Image | Tensor | Sequence[Image.Image | Tensor]" (PIL is imported lazily)


def to_image_tensors(images: ImageInput) -> list[Tensor]:
    """Split a PIL image, a ``[3, H, W]`` or ``[B, 3, H, W]`` tensor, or a list of them into RGB images ``[3, H, W]``.

    ``uint8`` tensors stay ``uint8``; float tensors in ``[0, 1]`` are scaled to 0..255 (still float) so that one
    normalisation serves both.

    Example:
        >>> [tuple(image.shape) for image in to_image_tensors([torch.zeros(2, 3, 4, 5), torch.ones(3, 6, 6)])]
        [(3, 4, 5), (3, 4, 5), (3, 6, 6)]
        >>> to_image_tensors(torch.full((3, 1, 1), 0.5))[0].flatten().tolist()
        [127.5, 127.5, 127.5]
    """
    if isinstance(images, (list, tuple)):
        out: list[Tensor] = []
        for image in images:
            out.extend(to_image_tensors(image))
        if not out:
            raise ValueError("`images` is empty")
        return out
    if isinstance(images, Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"image tensors must be RGB [3, H, W] or [B, 3, H, W], got shape {tuple(images.shape)}")
        if images.is_floating_point():
            low, high = images.min().item(), images.max().item()
            if low < 0 or high > 1:
                raise ValueError(
                    f"float images must hold values in [0, 1] (got {low:.3g}..{high:.3g}); for tensors that are "
                    "already normalised model input use embed(..., preprocessed=True)"
                )
            images = images * 255.0
        elif images.dtype != torch.uint8:
            raise ValueError(f"image tensors must be uint8 (0..255) or float ([0, 1]), got {images.dtype}")
        return list(images.unbind(0))
    return [_pil_to_tensor(images)]


def _pil_to_tensor(image: Image.Image) -> Tensor:
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise ValueError(f"`images` must be PIL images or tensors, got {type(image).__name__}")
    import numpy as np

    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)
