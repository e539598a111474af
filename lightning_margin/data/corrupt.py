"""Skipping unreadable training images: count them across DataLoader workers, report the count per epoch.

A large scraped training set always has a few broken files. By default every reader raises an error naming the
file (or ``.rec`` record); with ``FaceDataModule(skip_corrupt=True)`` the training set is wrapped in
:class:`SkipCorruptDataset`, which turns such an error into a dropped sample:

* the sample is dropped, never replaced by a neighbour, so labels can never shift (the batch is just one smaller);
* each drop is counted in a :class:`SkipCounter` that lives in shared memory with one slot per worker process, so
  counts from all workers reach the main process without locks;
* :class:`SkipReportingDataLoader` warns with the number skipped when an epoch's iteration ends (and logs the first
  few files from each worker as they happen).

Verification sets are never skipped over: a missing pair would change the benchmark.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, get_worker_info
from torch.utils.data.dataloader import default_collate

from lightning_margin.data.decode import CorruptImageError
from lightning_margin.data.recordio import RecordIOError
from lightning_margin.data.sampler import ResumableDataLoader

__all__ = [
    "CorruptImagesSkippedWarning",
    "SkipCorruptDataset",
    "SkipCounter",
    "SkipReportingDataLoader",
    "collate_skipping_none",
]

log = logging.getLogger(__name__)

#: Errors that mean "this one training image is unusable" (as opposed to a broken configuration).
SKIPPABLE_ERRORS: tuple[type[Exception], ...] = (CorruptImageError, FileNotFoundError, RecordIOError)


class CorruptImagesSkippedWarning(UserWarning):
    """Emitted at the end of a training epoch in which unreadable images were skipped."""


class SkipCounter:
    """A counter that DataLoader worker processes increment and the main process reads.

    Backed by a shared-memory ``int64`` tensor with one slot per worker (slot 0 for the main process), so increments
    from different processes never race.

    Args:
        slots: Number of slots; workers beyond ``slots - 1`` share slots (their increments may then race).

    Example:
        >>> counter = SkipCounter()
        >>> counter.increment(); counter.increment()
        >>> counter.total
        2
    """

    def __init__(self, slots: int = 256) -> None:
        if slots < 2:
            raise ValueError(f"slots must be >= 2, got {slots}")
        self._counts = torch.zeros(slots, dtype=torch.int64).share_memory_()

    def increment(self) -> None:
        """Add one for the calling process (a worker's own slot)."""
        info = get_worker_info()
        slot = 0 if info is None else 1 + info.id % (self._counts.numel() - 1)
        self._counts[slot] += 1

    @property
    def total(self) -> int:
        """The sum over all processes."""
        return int(self._counts.sum())


class SkipCorruptDataset(Dataset):
    """Wrap a map-style training set so an unreadable sample becomes ``None`` (dropped by the collate) and is counted.

    Args:
        dataset: The dataset whose items may raise :data:`SKIPPABLE_ERRORS` (corrupt or missing image, broken
            RecordIO record).
        counter: Where skips are counted (a fresh :class:`SkipCounter` by default).
        max_logged: How many skipped files each process names in the log (the count is always complete).

    Example:
        >>> from lightning_margin.data import SyntheticFaces
        >>> safe = SkipCorruptDataset(SyntheticFaces(num_classes=2, images_per_class=2, image_size=8))
        >>> len(safe), safe.counter.total
        (4, 0)
    """

    def __init__(self, dataset: Dataset, counter: SkipCounter | None = None, max_logged: int = 10) -> None:
        self.dataset = dataset
        self.counter = counter if counter is not None else SkipCounter()
        self.max_logged = max_logged
        self._logged = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        # Expose the wrapped dataset's attributes (num_classes, classes, ...). Guard "dataset" itself so unpickling,
        # which looks attributes up before __dict__ is filled, cannot recurse.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except SKIPPABLE_ERRORS as error:
            self.counter.increment()
            if self._logged < self.max_logged:
                self._logged += 1
                log.warning("skipping unreadable training sample %d: %s", index, error)
            return None


def collate_skipping_none(batch: Sequence[Any]) -> Any:
    """``default_collate`` after dropping the ``None`` samples :class:`SkipCorruptDataset` returns.

    Raises:
        RuntimeError: if every sample of the batch was unreadable (the data set is then broken beyond skipping).

    Example:
        >>> images, labels = collate_skipping_none([(torch.zeros(2), 0), None, (torch.ones(2), 1)])
        >>> images.shape, labels.tolist()
        (torch.Size([2, 2]), [0, 1])
    """
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        raise RuntimeError(
            f"all {len(batch)} samples of a training batch were unreadable and skipped; check the data set"
        )
    return default_collate(kept)


class SkipReportingDataLoader(ResumableDataLoader):
    """A :class:`~lightning_margin.data.sampler.ResumableDataLoader` that warns, when an epoch's iteration ends, how
    many samples a :class:`SkipCounter` counted.

    Takes every ``ResumableDataLoader`` argument (Lightning re-creates it with a distributed sampler under DDP) plus
    ``skip_counter``. It resumes mid-epoch like its base class: a batch with dropped samples still advances the
    position by ``batch_size`` samples of the epoch's order.

    Args:
        dataset: The (usually :class:`SkipCorruptDataset`-wrapped) dataset.
        *args: ``ResumableDataLoader`` positional arguments.
        skip_counter: The counter to report; ``None`` reports nothing.
        **kwargs: ``ResumableDataLoader`` keyword arguments.

    Attributes:
        skipped_last_epoch: Samples skipped during the last finished (or abandoned) iteration.

    Example:
        >>> safe = SkipCorruptDataset(list(range(4)))  # doctest: +SKIP
        >>> loader = SkipReportingDataLoader(safe, batch_size=2, skip_counter=safe.counter)  # doctest: +SKIP
    """

    def __init__(self, dataset: Dataset, *args: Any, skip_counter: SkipCounter | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        self.skip_counter = skip_counter
        self.skipped_last_epoch = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        start = self.skip_counter.total if self.skip_counter is not None else 0
        try:
            yield from super().__iter__()
        finally:
            # Also runs when an epoch is cut short (limit_train_batches) and the iterator is dropped.
            if self.skip_counter is not None:
                self.skipped_last_epoch = self.skip_counter.total - start
                if self.skipped_last_epoch:
                    warnings.warn(
                        f"skipped {self.skipped_last_epoch} unreadable training image(s) of {len(self.dataset)} this "
                        "epoch (skip_corrupt=True); the log names the first ones",
                        CorruptImagesSkippedWarning,
                        stacklevel=2,
                    )
