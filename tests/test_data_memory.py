"""InMemoryDataset: read once, same items, metadata forwarded, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from lightning_margin.data import InMemoryDataset, SyntheticFaces


class _Counting(Dataset):
    def __init__(self, items: list) -> None:
        self.items = items
        self.reads = 0
        self.num_classes = 7

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        self.reads += 1
        return self.items[index]


def test_items_equal_the_wrapped_dataset_and_are_read_once() -> None:
    source = SyntheticFaces(num_classes=3, images_per_class=4, image_size=12)
    counting = _Counting([source[i] for i in range(len(source))])
    cached = InMemoryDataset(counting, progress=False)
    assert counting.reads == len(source) == len(cached)
    for _ in range(2):
        for index in range(len(source)):
            image, label = cached[index]
            assert torch.equal(image, source[index][0]) and int(label) == source[index][1]
    assert counting.reads == len(source)  # later epochs never touch the source
    assert cached.num_classes == 7  # metadata is forwarded
    assert cached.nbytes == 12 * 3 * 12 * 12 * source[0][0].element_size() + 12 * 8


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([], "cannot cache an empty dataset"),
        ([(torch.zeros(3, 4, 4), 0), (torch.zeros(3, 5, 4), 1)], r"field 0 of item 1 has shape \(3, 5, 4\)"),
        ([(torch.zeros(2), 0), (torch.zeros(2),)], "item 1 has 1 fields, item 0 has 2"),
    ],
)
def test_unequal_or_empty_items_are_refused_naming_the_item(items: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InMemoryDataset(_Counting(items), progress=False)
