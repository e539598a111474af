"""Flip test-time augmentation against embeddings computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_margin.tta import embed


class CountingModel(nn.Module):
    """A small conv embedder that is not mirror-symmetric, recording the batch size of every forward call."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, kernel_size=3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 6 * 6, 5),
        )
        self.batch_sizes: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(images.shape[0])
        return self.net(images)


def numpy_normalize(array: np.ndarray) -> np.ndarray:
    return array / np.linalg.norm(array, axis=1, keepdims=True)


@pytest.fixture
def model() -> CountingModel:
    model = CountingModel()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        model.net[1].running_mean.uniform_(-0.5, 0.5)
        model.net[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_flip_embedding_is_the_normalised_sum_of_image_and_mirror(model):
    images = torch.rand(3, 3, 6, 6)
    with torch.no_grad():
        plain = model(images).double().numpy()
        # The mirror image built by hand, column by column, rather than with Tensor.flip.
        mirror_images = images[..., torch.arange(5, -1, -1)]
        mirror = model(mirror_images).double().numpy()
        model.batch_sizes.clear()
        result = embed(model, images, flip=True)
    np.testing.assert_allclose(result.numpy(), numpy_normalize(plain + mirror), atol=1e-6)
    assert model.batch_sizes == [6]  # image and mirror in one batched forward pass


def test_without_flip_the_embedding_is_normalised(model):
    images = torch.rand(4, 3, 6, 6)
    with torch.no_grad():
        expected = numpy_normalize(model(images).double().numpy())
        model.batch_sizes.clear()
        result = embed(model, images, flip=False)
    np.testing.assert_allclose(result.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(result.norm(dim=1).numpy(), np.ones(4), atol=1e-6)
    assert model.batch_sizes == [4]


def test_flip_embedding_is_mirror_invariant(model):
    images = torch.rand(2, 3, 6, 6)
    with torch.no_grad():
        assert not torch.allclose(embed(model, images, flip=False), embed(model, images.flip(-1), flip=False))
        torch.testing.assert_close(embed(model, images), embed(model, images.flip(-1)), atol=1e-6, rtol=0)


def test_embed_leaves_mode_and_autograd_alone(model):
    model.train()
    embeddings = embed(model, torch.rand(2, 3, 6, 6))
    assert model.training
    assert embeddings.requires_grad  # the caller decides about no_grad


def test_embed_rejects_non_image_batches(model):
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\)"):
        embed(model, torch.rand(3, 6, 6))
