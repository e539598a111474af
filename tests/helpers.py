"""Tiny models and data shared by the module, callback and CLI tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

IMAGE_SIZE = 8


def tiny_backbone(features: int = 32) -> nn.Module:
    """An image -> features map small enough for hundreds of CPU steps per second (no BatchNorm: DDP-exact)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, features), nn.ReLU())


def separable_images(num_classes: int = 4, per_class: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is a fixed random pattern plus small noise: linearly separable."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = prototypes[labels] + 0.3 * torch.randn(labels.shape[0], 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return images, labels


def train_loader(batch_size: int = 16, shuffle: bool = True, **kwargs) -> DataLoader:
    images, labels = separable_images(**kwargs)
    generator = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=shuffle, generator=generator)
