"""Resumable training order: a seeded per-epoch shuffle whose position is saved in checkpoints.

Lightning (>= 2.3) stores the ``state_dict()`` of every training DataLoader that has one in the checkpoint's loop
state, and on resume calls its ``load_state_dict`` before it creates the iterator. A plain ``DataLoader`` has none,
and its ``RandomSampler`` draws a new permutation from the global RNG at every ``iter()``: a run resumed mid-epoch
restarts that epoch in another order. Here:

* :class:`ResumableRandomSampler` shuffles each epoch with a permutation that is a pure function of
  ``(seed, epoch)`` (the one :class:`~torch.utils.data.DistributedSampler` uses, rank-aware the same way) and
  starts at :attr:`~ResumableRandomSampler.position`: the samples of the epoch already consumed.
* :class:`ResumableDataLoader` advances that position for every batch it hands out (not when workers prefetch),
  saves it in ``state_dict()``, and gives every sample its own random seed, ``(seed, epoch, index)``, so that
  random augmentation inside the dataset is the same whichever worker, rank or run reads the sample.

On resume the consumed samples are skipped by index: their images are never loaded.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sized
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from lightning_margin._validation import check_integer

__all__ = [
    "DeferSigtermInWorkers",
    "ResumableDataLoader",
    "ResumableRandomSampler",
    "sample_seed",
]

_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    # One step of the SplitMix64 generator (Steele et al., 2014): a bijective 64-bit mix whose outputs for
    # consecutive inputs are unrelated, so sample seeds of neighbouring indices give independent streams.
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The random seed of sample ``index`` in epoch ``epoch`` of a run seeded with ``seed`` (63 bits).

    Example:
        >>> sample_seed(0, 0, 1) != sample_seed(0, 0, 2) != sample_seed(0, 1, 1)
        True
    """
    value = _splitmix64(seed & _MASK64)
    value = _splitmix64(value ^ (epoch & _MASK64))
    return _splitmix64(value ^ (index & _MASK64)) >> 1


def _default_seed() -> int:
    # Every rank must shuffle with the same permutation. Lightning's seed_everything exports its seed for the
    # processes it launches; without it, 0 (as Lightning's and torch's DistributedSampler): a process's own
    # torch.initial_seed() differs between ranks, whose shares would then overlap.
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def _world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    initialized = dist.is_available() and dist.is_initialized()
    world = num_replicas if num_replicas is not None else dist.get_world_size() if initialized else 1
    rank = rank if rank is not None else dist.get_rank() if initialized else 0
    return world, rank


class ResumableRandomSampler(DistributedSampler):
    """A shuffling sampler whose order is a pure function of ``(seed, epoch)`` and whose position can be restored.

    Each epoch visits this rank's share of ``range(len(dataset))`` in
    :class:`~torch.utils.data.DistributedSampler`'s order for ``(seed, epoch)`` (its ``__iter__``), starting at
    :attr:`position`. Nothing is drawn from the global random state. :class:`ResumableDataLoader` advances
    :attr:`position` as batches are consumed and saves :meth:`state_dict` in checkpoints; on resume the epoch
    continues with the next unread sample. Lightning calls :meth:`set_epoch` at every epoch start.

    Distributed training: the world size and rank are read from the default process group whenever they are
    needed (unless given), so the sampler may be created before the group exists. It subclasses
    ``DistributedSampler``, so Lightning keeps it (``use_distributed_sampler=True`` only replaces other
    samplers). Every rank must use the same ``seed``. A checkpoint resumes on another number of ranks: the
    consumed part of the epoch is carried over as a count of samples (exact when it divides evenly).

    Args:
        dataset: The dataset (only its length is used).
        seed: The shuffle seed. ``None``: Lightning's ``seed_everything`` seed (``$PL_GLOBAL_SEED``), else 0, the
            same on every rank. A loaded checkpoint's seed replaces it, so the resumed run keeps its order.
        shuffle: Shuffle (``False``: dataset order, still resumable).
        drop_last: With several ranks: drop the tail of the epoch instead of padding it with repeated samples so
            that every rank gets the same number.
        num_replicas: Number of ranks; ``None``: the process group's (1 without one).
        rank: This rank; ``None``: the process group's (0 without one).

    Example:
        >>> sampler = ResumableRandomSampler(range(6), seed=0)
        >>> first = list(sampler)
        >>> sampler.position = 4  # four samples of this epoch were consumed
        >>> list(sampler) == first[4:]
        True
    """

    def __init__(
        self,
        dataset: Sized,
        seed: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        # DistributedSampler.__init__ would fix the world size now (and need a process group): resolved lazily here.
        Sampler.__init__(self)
        if num_replicas is not None:
            num_replicas = check_integer("num_replicas", num_replicas)
        if rank is not None:
            rank = check_integer("rank", rank, minimum=0)
            if num_replicas is not None and rank >= num_replicas:
                raise ValueError(
                    f"`rank` must lie in [0, {num_replicas - 1}] for num_replicas={num_replicas}, got {rank}"
                )
        self.dataset = dataset
        self.seed = (_default_seed() if seed is None else int(seed)) % (1 << 63)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self._num_replicas = num_replicas
        self._rank = rank
        self.epoch = 0
        self.position = 0

    @property
    def num_replicas(self) -> int:
        """The number of ranks sharing each epoch."""
        return _world(self._num_replicas, self._rank)[0]

    @property
    def rank(self) -> int:
        """This rank."""
        return _world(self._num_replicas, self._rank)[1]

    @property
    def num_samples(self) -> int:
        """Samples per epoch on this rank."""
        size, world = len(self.dataset), self.num_replicas
        return size // world if self.drop_last else math.ceil(size / world)

    @property
    def total_size(self) -> int:
        """Samples per epoch over all ranks (with padding or truncation)."""
        return self.num_samples * self.num_replicas

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        # DistributedSampler's own order and share, read through the properties above; resumed at `position`.
        return itertools.islice(super().__iter__(), self.position, None)

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s permutation; a different epoch than the current one starts at position 0."""
        if epoch != self.epoch:
            self.position = 0
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        """The seed, the epoch, this rank's position in it, and what they refer to (world size, dataset size)."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "num_replicas": self.num_replicas,
            "dataset_size": len(self.dataset),
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: the same seed and epoch, the next unread sample.

        A different dataset size restarts the saved epoch from its beginning (with a warning); a different world
        size converts the position through the number of samples consumed over all ranks.
        """
        self.seed = int(state_dict["seed"])
        self.epoch = int(state_dict["epoch"])
        self.shuffle = bool(state_dict.get("shuffle", self.shuffle))
        position = int(state_dict["position"])
        if state_dict.get("dataset_size", len(self.dataset)) != len(self.dataset):
            warnings.warn(
                f"the checkpoint's training set had {state_dict['dataset_size']} samples, this one has "
                f"{len(self.dataset)}: epoch {self.epoch} restarts from its first sample",
                stacklevel=2,
            )
            position = 0
        saved_world, world = int(state_dict.get("num_replicas", self.num_replicas)), self.num_replicas
        if saved_world != world:
            consumed = position * saved_world  # the epoch's first `consumed` indices are read, whatever the ranks
            position = consumed // world
            if consumed % world:
                warnings.warn(
                    f"resuming on {world} ranks a checkpoint written on {saved_world}: {consumed} samples of the "
                    f"epoch were consumed, not a multiple of {world}; up to {world - 1} of them are read again",
                    stacklevel=2,
                )
        self.position = min(position, self.num_samples)


class _SampleSeeded(Dataset):
    """Reads each item with torch's CPU, NumPy's and Python's global generators seeded by :func:`sample_seed`.

    The epoch comes from a shared-memory tensor that the sampler's loader updates, so persistent workers (which
    hold a copy of this dataset made when they started) see the current epoch. The generators' states are
    restored after each item: in the main process (``num_workers=0``) reading data must not move the model's
    random stream (dropout, Partial FC sampling).
    """

    def __init__(self, dataset: Dataset, seed: int, epoch: Tensor) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        with _seeded_cpu_generators(sample_seed(self.seed, int(self.epoch), index)):
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        # Forward dataset metadata (num_classes, ...); guard our own fields, which unpickling looks up first.
        if name in ("dataset", "seed", "epoch"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


@contextmanager
def _seeded_cpu_generators(seed: int) -> Iterator[None]:
    # A worker's generators serve its samples only: seeding is enough (about 7 us). In the main process the
    # previous states come back afterwards (about 70 us, mostly NumPy's 2.5 kB state).
    restore = get_worker_info() is None
    if restore:
        torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    # Only the CPU generator: torch.manual_seed would also reseed (and so move) every CUDA generator.
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)
    try:
        yield
    finally:
        if restore:
            torch.set_rng_state(torch_state)
            np.random.set_state(numpy_state)
            random.setstate(python_state)


class _CountingIterator(Iterator):
    """A DataLoader iterator that tells its loader about every batch it hands out.

    The DataLoader's own iterator is created at the first ``next()``, not here: on resume Lightning creates the
    training iterator before it calls ``set_epoch`` for the resumed epoch (``FitLoop.setup_data``, then
    ``on_advance_start``), and an iterator created at once would fix the epoch's order (workers prefetch indices as
    soon as they start) and its per-sample seeds for the previous epoch.
    """

    def __init__(self, loader: ResumableDataLoader, start: Callable[[], Iterator]) -> None:
        self.loader = loader
        self.start = start
        self.iterator: Iterator | None = None

    def __next__(self) -> Any:
        if self.iterator is None:
            self.iterator = self.start()
        batch = next(self.iterator)
        self.loader._consumed_one_batch()
        return batch

    def __len__(self) -> int:
        return len(self.loader)


class DeferSigtermInWorkers:
    """A DataLoader ``worker_init_fn`` with which workers outlive a SIGTERM by up to ``grace_period`` seconds.

    Schedulers (SLURM, ``kill -TERM -- -PGID``) signal the whole process group. A worker killed by SIGTERM makes
    torch raise "DataLoader worker is killed by signal" in the main process at whatever it is doing (a training
    step, writing the preemption checkpoint). With this, the first SIGTERM lets the worker go on serving while
    Lightning finishes the step and saves; the worker then exits with status 0 (which torch does not report as
    a crash) when the main process shuts it down, when a second SIGTERM arrives (how ``multiprocessing``
    terminates workers at exit), or when the grace period ends. :class:`ResumableDataLoader` installs it; give
    it to the other loaders whose workers live during training (persistent validation workers).

    Args:
        worker_init_fn: Called next, as DataLoader's own ``worker_init_fn`` (``None``: nothing).
        grace_period: Seconds a worker keeps serving after the first SIGTERM (SLURM kills 30 s after it).

    Example:
        >>> loader = DataLoader(range(8), num_workers=2, worker_init_fn=DeferSigtermInWorkers())
    """

    def __init__(self, worker_init_fn: Any = None, grace_period: float = 30.0) -> None:
        self.worker_init_fn = worker_init_fn
        self.grace_period = grace_period

    def __call__(self, worker_id: int) -> None:
        received = threading.Event()

        def on_sigterm(signum: int, frame: Any) -> None:
            if received.is_set():  # the second one: the main process is terminating its workers
                os._exit(0)
            received.set()
            timer = threading.Timer(self.grace_period, os._exit, args=(0,))
            timer.daemon = True
            timer.start()

        signal.signal(signal.SIGTERM, on_sigterm)
        if self.worker_init_fn is not None:
            self.worker_init_fn(worker_id)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that Lightning resumes mid-epoch: same order, next unread batch, same augmentations.

    With the default sampler (a :class:`ResumableRandomSampler`) it

    * advances the sampler's :attr:`~ResumableRandomSampler.position` by one batch whenever it hands a batch to
      the training loop (batches that workers prefetched but nobody consumed do not count), and moves the sampler
      to the next epoch after the last batch;
    * saves the sampler's state in :meth:`state_dict`, which Lightning stores in every checkpoint and gives back
      to :meth:`load_state_dict` on resume, before the first ``iter()``;
    * with ``seed_samples``, reads every sample with the global CPU generators (torch, NumPy, Python) seeded by
      :func:`sample_seed` ``(seed, epoch, index)``: random augmentation inside the dataset (a random flip in the
      transform) is then a pure function of the sample and the epoch, the same for any ``num_workers``, rank or
      resume point, and reading data leaves the main process's random state untouched;
    * iterates with a generator of its own (seeded from the sampler's seed), so creating the iterator draws
      nothing from the global random state either;
    * lets its worker processes outlive a SIGTERM (:class:`DeferSigtermInWorkers`): when a scheduler signals the
      whole process group, the main process finishes the step and saves its checkpoint instead of failing on a
      killed worker.

    With another ``sampler`` (Lightning passes a ``SequentialSampler`` for ``overfit_batches``) it is a plain
    ``DataLoader`` with an empty state.

    Args:
        dataset: A map-style dataset.
        batch_size: Samples per batch.
        shuffle: Shuffle every epoch (passed to the default sampler).
        sampler: ``None`` for a :class:`ResumableRandomSampler` over ``dataset``, or a sampler of your own.
        seed: The default sampler's seed (see :class:`ResumableRandomSampler`).
        seed_samples: Seed the global CPU generators per sample while reading it.
        drop_last: Drop the last incomplete batch of each epoch.
        **kwargs: Any other ``DataLoader`` argument (``num_workers``, ``collate_fn``, ``pin_memory``, ...).

    Example:
        >>> loader = ResumableDataLoader(range(10), batch_size=2, seed=0)
        >>> iterator = iter(loader)
        >>> first, second = next(iterator), next(iterator)
        >>> state = loader.state_dict()  # two batches of epoch 0 consumed
        >>> resumed = ResumableDataLoader(range(10), batch_size=2)
        >>> resumed.load_state_dict(state)
        >>> [batch.tolist() for batch in resumed] == [batch.tolist() for batch in iterator]
        True
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int | None = 1,
        shuffle: bool | None = True,
        sampler: Sampler | None = None,
        *,
        seed: int | None = None,
        seed_samples: bool = True,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(dataset, _SampleSeeded):  # Lightning may re-create the loader from its `dataset` attribute
            dataset = dataset.dataset
        if kwargs.get("batch_sampler") is not None:
            raise ValueError("ResumableDataLoader batches its own sampler: pass `sampler`, not `batch_sampler`")
        if sampler is None:
            sampler = ResumableRandomSampler(dataset, seed=seed, shuffle=bool(shuffle))  # type: ignore[arg-type]
        self.resumable = isinstance(sampler, ResumableRandomSampler)
        # A shared-memory epoch: persistent workers read it for the per-sample seeds.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        if self.resumable and seed_samples:
            dataset = _SampleSeeded(dataset, sampler.seed, self._epoch)
        if generator is None and self.resumable:
            generator = torch.Generator().manual_seed(sampler.seed)
        worker_init_fn = kwargs.pop("worker_init_fn", None)
        if not isinstance(worker_init_fn, DeferSigtermInWorkers):
            worker_init_fn = DeferSigtermInWorkers(worker_init_fn)
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            generator=generator,
            worker_init_fn=worker_init_fn,
            **kwargs,
        )

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        if not self.resumable:
            return super().__iter__()
        return _CountingIterator(self, self._start_epoch)

    def _start_epoch(self) -> Iterator[Any]:
        # Read when the first batch is requested: Lightning may call set_epoch between iter() and next().
        sampler: ResumableRandomSampler = self.sampler  # type: ignore[assignment]
        if isinstance(self.dataset, _SampleSeeded):
            self.dataset.seed = sampler.seed  # a loaded checkpoint may have changed it
        self._epoch.fill_(sampler.epoch)
        return super().__iter__()

    def _consumed_one_batch(self) -> None:
        sampler: ResumableRandomSampler = self.sampler  # type: ignore[assignment]
        batch_size = self.batch_size or 1
        sampler.position = min(sampler.position + batch_size, sampler.num_samples)
        if sampler.position >= self._epoch_end():
            # The epoch is complete: a checkpoint written now must resume at the start of the next one.
            sampler.set_epoch(sampler.epoch + 1)
            self._epoch.fill_(sampler.epoch)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's :meth:`~ResumableRandomSampler.state_dict` (empty for other samplers)."""
        if not self.resumable:
            return {}
        return self.sampler.state_dict()  # type: ignore[attr-defined]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: the next ``iter()`` starts at the first unread batch."""
        if not self.resumable or not state_dict:
            return
        sampler: ResumableRandomSampler = self.sampler  # type: ignore[assignment]
        sampler.load_state_dict(state_dict)
        if sampler.position >= self._epoch_end():
            sampler.set_epoch(sampler.epoch + 1)
        self._epoch.fill_(sampler.epoch)

    def _epoch_end(self) -> int:
        """The sampler position at which this rank's epoch is complete (a dropped last batch is never read)."""
        sampler: ResumableRandomSampler = self.sampler  # type: ignore[assignment]
        return len(self) * (self.batch_size or 1) if self.drop_last else sampler.num_samples
