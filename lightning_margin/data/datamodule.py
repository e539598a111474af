"""``FaceDataModule``: one training source and any number of named verification sets, configured from YAML."""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from lightning_margin.data.corrupt import (
    SkipCorruptDataset,
    SkipCounter,
    SkipReportingDataLoader,
    collate_skipping_none,
)
from lightning_margin.data.memory import InMemoryDataset
from lightning_margin.data.sampler import DeferSigtermInWorkers, ResumableDataLoader
from lightning_margin.data.sources import (
    DATA_ENV,
    build_training_set,
    build_verification_set,
    default_verification_sets,
    parse_source,
    resolve_data_root,
    source_crop,
)
from lightning_margin.data.transforms import LFW_CROP_SIZE, FaceTransform, normalize_batch, random_shift

__all__ = ["FaceDataModule"]


class _WithPairIndex(Dataset):
    """Appends each pair's position in its set: ``(image1, image2, issame, pair_index)``.

    Under DDP, Lightning's ``DistributedSampler`` interleaves the pairs across ranks and pads the last shard with
    repeats; with the index, :class:`~lightning_margin.MarginModule`'s metrics drop the repeats and restore the order,
    so multi-process validation gives exactly the single-process numbers.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple:
        return (*self.dataset[index], index)


class FaceDataModule(LightningDataModule):
    """Face training and verification data for angular-margin models, from LFW, image folders, RecordIO and .bin.

    Training batches are ``(images, labels)``: ``float32 [B, 3, H, W]`` normalised to ``[-1, 1]`` (by default) and
    ``int64 [B]``. :meth:`val_dataloader` returns one loader per verification set, in the order of
    :attr:`verification_set_names`, with batches ``(images1, images2, issame)`` (no flip: models apply flip test-time
    augmentation themselves); when the trainer runs several processes, batches also carry ``pair_index`` (each pair's
    position in its set) so metrics can undo the distributed sampler's interleaving and padding.

    Sources are strings (see :mod:`lightning_margin.data.sources`): ``"synthetic[:N]"``, ``"lfw:dev_train"``,
    ``"imagefolder:PATH"``, ``"recordio:PATH"`` for training; ``"synthetic[:N]"``, ``"lfw:dev_test"``,
    ``"lfw:10fold"``, ``"bin:PATH"`` for verification. Relative paths and LFW (``<root>/lfw``) are found under the
    data root: ``data_root``, else ``$LIGHTNING_MARGIN_DATA``.

    Preprocessing (:class:`~lightning_margin.data.transforms.FaceTransform`): centre crop (``lfw_crop_size`` for LFW's
    250x250 deep-funneled images, whose face sits in the centre; ``crop_size`` for image folders, RecordIO and .bin,
    none by default since those are usually aligned already), resize to ``image_size``, random horizontal flip with
    ``flip_probability`` (training only), RGB, ``(x / 255 - mean) / std``.

    Distributed training: Lightning replaces the samplers with distributed ones (do not set
    ``use_distributed_sampler=False``); workers are persistent when ``num_workers > 0``; memory is pinned when the
    trainer runs on a GPU (``pin_memory=None``).

    Args:
        train: The training source.
        val_sets: Verification sets, ``{name: source}``; names are what metrics are logged under. ``None`` picks the
            training source's default (:func:`~lightning_margin.data.sources.default_verification_sets`):
            ``{"lfw_dev_test": "lfw:dev_test"}`` when training on ``lfw:dev_train`` (View 1: disjoint people),
            ``{"synthetic": "synthetic"}`` when training on synthetic data, none otherwise.
        data_root: The folder holding ``lfw/`` and relative paths; ``None`` reads ``$LIGHTNING_MARGIN_DATA``.
        image_size: The backbone's input side, or ``(height, width)``.
        lfw_crop_size: Centre crop (pixels) of LFW images before resizing.
        crop_size: Centre crop of other sources' images before resizing; ``None`` for none.
        mean: Per-channel normalisation mean, in ``[0, 1]`` units.
        std: Per-channel normalisation standard deviation, in ``[0, 1]`` units.
        flip_probability: Probability of mirroring a training image.
        batch_size: Training batch size (per device); the last incomplete batch is dropped.
        val_batch_size: Verification batch size in pairs; ``None`` uses ``batch_size``.
        num_workers: DataLoader worker processes per loader.
        pin_memory: Pin host memory; ``None`` pins when the trainer's device (or, before a trainer is attached, the
            machine) has CUDA.
        min_images_per_identity: Drop training identities with fewer images (LFW, image folders); LFW DevTrain has
            1,184 people with 2 or more.
        skip_corrupt: Skip unreadable training images (corrupt, truncated, missing) and report the count at the end
            of each epoch, instead of stopping with an error naming the file.
        image_folder_cache_dir: Where image folder listings are cached; ``None`` for the default
            (``~/.cache/lightning_margin/image_folder``).
        normalize_on_device: Workers decode, crop and resize only, and loaders yield ``uint8`` images; the random
            flip and the normalisation run per batch on the device in :meth:`on_after_batch_transfer` (what a GPU
            run wants: less CPU per image, a quarter of the bytes to pin and copy). Code that iterates the loaders
            itself must then call :func:`~lightning_margin.data.normalize_batch`.
        random_shift: Translate each training image by up to this many pixels (edges replicated; per batch on the
            device, see :func:`~lightning_margin.data.random_shift`); 0 for none.
        cache_in_memory: Decode every training and verification image once (in :meth:`setup`, with a progress bar)
            and serve the ``uint8`` tensors from memory (:class:`~lightning_margin.data.InMemoryDataset`): for small
            sets such as LFW, where decoding JPEGs every epoch costs more than a small backbone's step. Needs
            ``normalize_on_device=True`` (the random flip must come after the cache).

    Raises:
        ValueError: on an unknown source, split or setting, naming the allowed values.
        FileNotFoundError: if the training data is missing (named, with the data root setting to fix).

    Example:
        >>> data = FaceDataModule(train="synthetic:8", val_sets={"synthetic": "synthetic:20"}, image_size=32,
        ...                       batch_size=16, num_workers=0)
        >>> data.num_classes, data.verification_set_names
        (8, ['synthetic'])
        >>> images, labels = next(iter(data.train_dataloader()))
        >>> tuple(images.shape), labels.dtype
        ((16, 3, 32, 32), torch.int64)
    """

    def __init__(
        self,
        train: str = "synthetic",
        val_sets: dict[str, str] | None = None,
        data_root: str | None = None,
        image_size: int | tuple[int, int] = 112,
        lfw_crop_size: int = LFW_CROP_SIZE,
        crop_size: int | None = None,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        flip_probability: float = 0.5,
        batch_size: int = 64,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool | None = None,
        min_images_per_identity: int = 1,
        skip_corrupt: bool = False,
        image_folder_cache_dir: str | None = None,
        normalize_on_device: bool = False,
        random_shift: int = 0,
        cache_in_memory: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise ValueError(f"batch_size and val_batch_size must be >= 1, got {batch_size} and {val_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if lfw_crop_size < 1 or (crop_size is not None and crop_size < 1):
            raise ValueError(f"lfw_crop_size and crop_size must be positive, got {lfw_crop_size} and {crop_size}")
        if min_images_per_identity < 1:
            raise ValueError(f"min_images_per_identity must be >= 1, got {min_images_per_identity}")
        if random_shift < 0:
            raise ValueError(f"random_shift must be >= 0 pixels, got {random_shift}")
        if cache_in_memory and not normalize_on_device:
            raise ValueError(
                "cache_in_memory=True needs normalize_on_device=True: cached images are read once, so the random "
                "flip must happen per batch after the cache"
            )
        self.train_source = parse_source(train, "training")
        if val_sets is None:
            val_sets = default_verification_sets(train)
        for name, spec in val_sets.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"verification set names must be non-empty strings, got {name!r}")
            parse_source(spec, "verification")
        self.val_sets = dict(val_sets)
        self.data_root = resolve_data_root(data_root)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size if val_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.skip_corrupt = skip_corrupt
        self.image_size = image_size
        self.normalize_on_device = normalize_on_device
        self.flip_probability = flip_probability
        self.random_shift = random_shift
        self.cache_in_memory = cache_in_memory
        # Transforms validate image size, mean, std and flip probability. With normalize_on_device the workers stop
        # after the resize (uint8) and on_after_batch_transfer flips and normalises whole batches on the device.
        self.train_transform = self._transform(train, "training", flip_probability)
        # The training set is built now: ``num_classes`` must exist right after __init__ for LightningCLI's
        # ``data.num_classes -> model.num_classes`` link. Every reader indexes cheaply (list files, a RecordIO
        # header, a cached folder listing) and opens no file handles until items are read.
        try:
            self.train_set: Dataset = build_training_set(
                train,
                self.data_root,
                self.train_transform,
                image_size=image_size,
                min_images_per_identity=min_images_per_identity,
                check_files=not skip_corrupt,  # with skipping, a missing file is counted when read instead
                cache_dir=image_folder_cache_dir,
            )
        except FileNotFoundError as error:
            root = f"data root {self.data_root}" if self.data_root else f"no data root (data_root / ${DATA_ENV} unset)"
            raise FileNotFoundError(f"training source {train!r}: {error} [{root}]") from error
        self.skip_counter = SkipCounter()
        self._val_datasets: dict[str, Dataset] | None = None

    def _transform(
        self, spec: str, role: Literal["training", "verification"], flip_probability: float
    ) -> FaceTransform:
        crop = source_crop(spec, self.hparams.crop_size, self.hparams.lfw_crop_size, role)
        on_device = self.normalize_on_device
        flip = 0.0 if on_device else flip_probability
        return FaceTransform(self.image_size, crop, self.hparams.mean, self.hparams.std, flip, normalize=not on_device)

    @property
    def num_classes(self) -> int:
        """Number of training identities (for the model's classification head)."""
        return int(self.train_set.num_classes)  # type: ignore[attr-defined]

    @property
    def verification_set_names(self) -> list[str]:
        """Names of the verification sets, in the order of :meth:`val_dataloader`'s loaders."""
        return list(self.val_sets)

    @property
    def skipped_images(self) -> int:
        """Unreadable training images skipped so far (all epochs, all workers; ``skip_corrupt=True``)."""
        return self.skip_counter.total

    def val_datasets(self) -> dict[str, Dataset]:
        """The verification datasets by name (built on first use)."""
        if self._val_datasets is None:
            datasets = {}
            for name, spec in self.val_sets.items():
                transform = self._transform(spec, "verification", 0.0)
                datasets[name] = build_verification_set(spec, self.data_root, transform, image_size=self.image_size)
            if self.cache_in_memory:
                datasets = {name: InMemoryDataset(data, f"caching {name}") for name, data in datasets.items()}
            self._val_datasets = datasets
        return self._val_datasets

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate", "test"):
            self.val_datasets()
        if stage == "fit" and self.cache_in_memory and not isinstance(self.train_set, InMemoryDataset):
            self.train_set = InMemoryDataset(self.train_set, "caching training images")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training: random shift; with ``normalize_on_device``: flip (training only) and normalise on the device."""
        trainer = self.trainer
        training = len(batch) == 2 and trainer is not None and trainer.training  # (images, labels)
        if training and self.random_shift:
            batch = (random_shift(batch[0], self.random_shift), batch[1])
        if not self.normalize_on_device:
            return batch
        mean, std = self.hparams.mean, self.hparams.std
        if len(batch) == 2:
            return normalize_batch(batch[0], mean, std, self.flip_probability if training else 0.0), batch[1]
        images1, images2, *rest = batch  # verification: (images1, images2, issame[, pair_index])
        return (normalize_batch(images1, mean, std), normalize_batch(images2, mean, std), *rest)

    def _pin_memory(self) -> bool:
        if self.pin_memory is not None:
            return self.pin_memory
        trainer = self.trainer
        if trainer is not None:
            return trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches that resume mid-epoch (:class:`~lightning_margin.data.sampler.ResumableDataLoader`).

        Lightning saves its position in the epoch's seeded order in every checkpoint; a resumed fit continues with
        the next unread batch, and the random flip drawn in the workers is seeded per sample, so it is the same
        for any ``num_workers``. With ``skip_corrupt`` it is a :class:`SkipReportingDataLoader`, which resumes too.
        """
        if len(self.train_set) < self.batch_size:  # type: ignore[arg-type]
            raise ValueError(
                f"the training set has {len(self.train_set)} images, fewer than batch_size={self.batch_size}; "  # type: ignore[arg-type]
                "lower batch_size (the last incomplete batch is dropped)"
            )
        common = {
            "batch_size": self.batch_size,
            "shuffle": True,
            "drop_last": True,
            "num_workers": self.num_workers,
            "pin_memory": self._pin_memory(),
            "persistent_workers": self.num_workers > 0,
            # Per-sample seeds only where the workers draw random numbers (the flip; done on the device otherwise).
            "seed_samples": self.train_transform.flip_probability > 0,
        }
        if not self.skip_corrupt:
            return ResumableDataLoader(self.train_set, **common)
        return SkipReportingDataLoader(
            SkipCorruptDataset(self.train_set, self.skip_counter),
            collate_fn=collate_skipping_none,
            skip_counter=self.skip_counter,
            **common,
        )

    def val_dataloader(self) -> list[DataLoader]:
        trainer = self.trainer
        distributed = trainer is not None and getattr(trainer, "world_size", 1) > 1
        return [
            DataLoader(
                _WithPairIndex(dataset) if distributed else dataset,
                batch_size=self.val_batch_size,
                shuffle=False,
                num_workers=self.num_workers,
                pin_memory=self._pin_memory(),
                persistent_workers=self.num_workers > 0,
                # A group-wide SIGTERM (SLURM) must not kill workers while the preemption checkpoint is saved.
                worker_init_fn=DeferSigtermInWorkers(),
            )
            for dataset in self.val_datasets().values()
        ]

    def test_dataloader(self) -> list[DataLoader]:
        """The verification loaders again (``lightning-margin test`` scores the same sets as validation)."""
        return self.val_dataloader()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(train={self.hparams.train!r}, val_sets={self.val_sets}, "
            f"num_classes={self.num_classes}, data_root={self.data_root})"
        )
