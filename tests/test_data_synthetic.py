"""Synthetic identities: deterministic, learnable (same identity closer than different), pairs well formed."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from lightning_margin.data import SyntheticFaces, SyntheticPairs


def test_deterministic_in_seed_and_labels_by_index() -> None:
    faces = SyntheticFaces(num_classes=5, images_per_class=3, image_size=(20, 16), seed=7)
    again = SyntheticFaces(num_classes=5, images_per_class=3, image_size=(20, 16), seed=7)
    other = SyntheticFaces(num_classes=5, images_per_class=3, image_size=(20, 16), seed=8)
    assert len(faces) == 15 and faces.num_classes == 5
    assert [faces[index][1] for index in range(15)] == [index // 3 for index in range(15)]
    image = faces[4][0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 20, 16)
    assert torch.equal(image, again[4][0])
    assert not torch.equal(image, other[4][0])
    assert not torch.equal(faces[3][0], faces[4][0])  # two samples of one identity differ


def test_same_identity_is_closer_than_different_identities() -> None:
    faces = SyntheticFaces(num_classes=8, images_per_class=6, image_size=32)
    images = torch.stack([faces[index][0] for index in range(len(faces))]).float().flatten(1)
    labels = torch.tensor([faces[index][1] for index in range(len(faces))])
    distances = torch.cdist(images, images)
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(faces), dtype=torch.bool)
    within = distances[same & off_diagonal].mean()
    between = distances[~same].mean()
    assert within < 0.75 * between
    # Nearest-neighbour identification works on raw pixels for most samples: the set is learnable.
    distances[~off_diagonal] = float("inf")
    assert (labels[distances.argmin(1)] == labels).float().mean() > 0.8


def test_prototypes_are_mirror_symmetric_like_faces() -> None:
    faces = SyntheticFaces(num_classes=3, images_per_class=1, image_size=32, max_shift=0, noise=0.0)
    image = faces[0][0].float()
    assert (image - image.flip(-1)).abs().max() <= 1  # rounding only


def test_pairs_alternate_same_and_different_and_use_unseen_identities() -> None:
    pairs = SyntheticPairs(num_pairs=40, num_classes=6, image_size=24)
    assert len(pairs) == 40
    assert pairs.issame == [index % 2 == 0 for index in range(40)]
    assert pairs.fold == [index // 4 for index in range(40)]
    gaps = {True: [], False: []}
    for index in range(40):
        first, second, issame = pairs[index]
        gaps[issame].append((first.float() - second.float()).norm())
    assert torch.stack(gaps[True]).mean() < 0.8 * torch.stack(gaps[False]).mean()
    training = SyntheticFaces(num_classes=6, images_per_class=1, image_size=24, max_shift=0, noise=0.0)
    unseen = SyntheticPairs(num_pairs=2, num_classes=6, image_size=24, max_shift=0, noise=0.0)
    assert not any(torch.equal(unseen[0][0], training[index][0]) for index in range(6))


def test_batches_through_a_dataloader_with_a_transform() -> None:
    faces = SyntheticFaces(num_classes=2, images_per_class=4, image_size=8, transform=lambda image: image.float() / 255)
    images, labels = next(iter(DataLoader(faces, batch_size=8)))
    assert images.dtype == torch.float32 and tuple(images.shape) == (8, 3, 8, 8)
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
