"""Flip test-time augmentation: embed an image together with its mirror image."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["embed"]


def embed(model: Callable[[Tensor], Tensor], images: Tensor, flip: bool = True) -> Tensor:
    """L2-normalised embeddings, optionally with flip test-time augmentation as in Deng et al., "ArcFace" (2019).

    With ``flip=True`` the embedding of an image is the L2-normalised sum of the embeddings of the image and of its
    horizontal mirror (insightface's evaluation default). Both go through the model in one batched forward pass, so
    the model sees a batch twice as large.

    This function does not change the model's mode or the autograd state: call ``model.eval()`` and wrap it in
    ``torch.no_grad()`` for evaluation (as :func:`lightning_margin.evaluation.evaluate_pairs` does).

    Args:
        model: maps ``(batch, channels, height, width)`` images to ``(batch, embedding_size)`` embeddings.
        images: ``(batch, channels, height, width)`` images; the mirror flips the last (width) axis.
        flip: add the mirror image's embedding before normalising.

    Returns:
        ``(batch, embedding_size)`` unit-norm embeddings.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8))
        >>> with torch.no_grad():
        ...     embeddings = embed(model, torch.rand(2, 3, 4, 4))
        >>> embeddings.shape, torch.allclose(embeddings.norm(dim=1), torch.ones(2))
        (torch.Size([2, 8]), True)
    """
    if images.ndim != 4:
        raise ValueError(f"`images` must have shape (batch, channels, height, width), got {tuple(images.shape)}")
    if not flip:
        return F.normalize(model(images), dim=1)
    batch = images.shape[0]
    embeddings = model(torch.cat([images, images.flip(-1)]))
    return F.normalize(embeddings[:batch] + embeddings[batch:], dim=1)
