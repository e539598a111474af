"""The model and data of the DDP equivalence test, shared by the DDP script and the single-process run."""

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_margin import MarginModule
from tests.helpers import IMAGE_SIZE, separable_images, tiny_backbone

PER_RANK_BATCH = 8
STEPS = 3


def make_module() -> MarginModule:
    torch.manual_seed(0)
    # No BatchNorm anywhere and a head without running buffers: with those, per-rank statistics would differ
    # from full-batch ones and the runs would not be comparable.
    return MarginModule(
        backbone=tiny_backbone(),
        num_classes=4,
        embedding_size=16,
        head="arcface",
        head_kwargs={"scale": 16.0, "margin": 0.3},
        neck="linear",
        input_size=IMAGE_SIZE,
        optimizer=sgd,
        flip_test=False,
    )


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def make_loader(batch_size: int, num_replicas: int = 1, rank: int = 0) -> DataLoader:
    images, labels = separable_images(num_classes=4, per_class=12)
    dataset = TensorDataset(images, labels)
    sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)
