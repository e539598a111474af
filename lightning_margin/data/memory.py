"""``InMemoryDataset``: decode a dataset once and serve its items from stacked tensors.

Small face sets (LFW's 13k images at 64-112 px are 160-500 MB as ``uint8``) fit in memory many times over; decoding
a 250x250 JPEG every epoch then costs more CPU than the training step on a small backbone. The cache holds what the
readers return after their deterministic part (decode, centre crop, resize to ``uint8``): random augmentation must
happen after it, per batch on the device (:func:`~lightning_margin.data.normalize_batch`,
:func:`~lightning_margin.data.random_shift`), which is what ``FaceDataModule(normalize_on_device=True)`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

__all__ = ["InMemoryDataset"]


class InMemoryDataset(Dataset):
    """Every item of ``dataset`` read once, stacked field by field into tensors (items are tuples of tensors/numbers).

    Built in the process that creates it: DataLoader workers forked later share the tensors' memory instead of
    decoding again. Attributes of the wrapped dataset (``num_classes``, ``people``, ...) stay reachable.

    Args:
        dataset: A map-style dataset whose items are tuples of equally shaped tensors or Python numbers; the items
            must be deterministic (no random transform), since they are read only once.
        description: Label of the progress bar.
        progress: Show a tqdm progress bar while decoding.

    Raises:
        ValueError: if the dataset is empty or its items differ in structure or shape (naming the item).

    Example:
        >>> from lightning_margin.data import SyntheticFaces
        >>> cached = InMemoryDataset(SyntheticFaces(num_classes=3, images_per_class=2, image_size=16), progress=False)
        >>> image, label = cached[4]
        >>> tuple(image.shape), int(label), cached.num_classes
        ((3, 16, 16), 2, 3)
    """

    def __init__(self, dataset: Dataset, description: str = "caching images", progress: bool = True) -> None:
        size = len(dataset)  # type: ignore[arg-type]
        if size == 0:
            raise ValueError("cannot cache an empty dataset")
        fields: list[list[Any]] | None = None
        for index in tqdm(range(size), desc=description, unit="img", disable=not progress):
            item = dataset[index]
            if not isinstance(item, tuple):
                item = (item,)
            if fields is None:
                fields = [[] for _ in item]
            if len(item) != len(fields):
                raise ValueError(f"item {index} has {len(item)} fields, item 0 has {len(fields)}")
            for values, value in zip(fields, item, strict=True):
                values.append(value)
        assert fields is not None
        self.dataset = dataset
        self.fields: tuple[Tensor, ...] = tuple(_stack(values, position) for position, values in enumerate(fields))

    def __len__(self) -> int:
        return self.fields[0].shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        return tuple(field[index] for field in self.fields)

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found normally: forward dataset metadata (num_classes, people, pairs, ...).
        if name in ("dataset", "fields"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def nbytes(self) -> int:
        """Memory held by the cached tensors, in bytes."""
        return sum(field.element_size() * field.nelement() for field in self.fields)


def _stack(values: Sequence[Any], position: int) -> Tensor:
    if isinstance(values[0], Tensor):
        shape = values[0].shape
        for index, value in enumerate(values):
            if value.shape != shape:
                raise ValueError(
                    f"field {position} of item {index} has shape {tuple(value.shape)}, item 0 has {tuple(shape)}: "
                    "only equally sized items can be cached"
                )
        return torch.stack(list(values))
    return torch.as_tensor(values)
