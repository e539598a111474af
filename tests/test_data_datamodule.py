"""FaceDataModule: batch contract, preprocessing values, data root, errors, corrupt images, Lightning wiring."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _update_dataloader
from lightning.pytorch import LightningModule
from PIL import Image
from torch.utils.data import DistributedSampler

from lightning_margin.data import (
    CorruptImageError,
    CorruptImagesSkippedWarning,
    FaceDataModule,
    SkipReportingDataLoader,
    write_bin,
)
from tests.helpers import quiet_trainer


def color_tree(root: Path, identities: int, per_identity: int, size: tuple[int, int] = (8, 8)) -> Path:
    """Identity k's images are solid grey 20 * k + i (lossless PNG): a pixel tells which identity it came from."""
    for identity in range(identities):
        folder = root / f"id{identity:02d}"
        folder.mkdir(parents=True)
        for index in range(per_identity):
            value = 20 * identity + index
            Image.new("RGB", size, (value, value, value)).save(folder / f"{index}.png")
    return root


def test_synthetic_batches_follow_the_contract() -> None:
    data = FaceDataModule(
        train="synthetic:6",
        val_sets={"b": "synthetic:10", "a": "synthetic:6"},
        image_size=24,
        batch_size=8,
        val_batch_size=4,
        num_workers=0,
    )
    assert data.num_classes == 6  # available right after __init__
    assert data.verification_set_names == ["b", "a"]
    images, labels = next(iter(data.train_dataloader()))
    assert images.dtype == torch.float32 and tuple(images.shape) == (8, 3, 24, 24)
    assert images.is_contiguous()
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert labels.dtype == torch.int64 and tuple(labels.shape) == (8,)
    assert labels.min() >= 0 and labels.max() < 6
    loaders = data.val_dataloader()
    assert [len(loader.dataset) for loader in loaders] == [10, 6]
    first, second, issame = next(iter(loaders[0]))
    assert tuple(first.shape) == tuple(second.shape) == (4, 3, 24, 24)
    assert issame.dtype == torch.bool and issame.tolist() == [True, False, True, False]
    assert len(data.train_dataloader()) == 96 // 8  # 6 identities x 16 images, incomplete batch dropped


def test_default_verification_sets() -> None:
    assert FaceDataModule(train="synthetic", num_workers=0).verification_set_names == ["synthetic"]


def test_normalisation_maps_pixels_to_minus_one_one(tmp_path: Path) -> None:
    root = color_tree(tmp_path / "faces", identities=3, per_identity=2)
    data = FaceDataModule(
        train=f"imagefolder:{root}", image_size=8, batch_size=6, num_workers=0, image_folder_cache_dir=str(tmp_path)
    )
    images, labels = next(iter(data.train_dataloader()))
    for image, label in zip(images, labels, strict=True):
        value = image[0, 0, 0].item()
        pixel = round((value + 1) * 127.5)
        assert pixel // 20 == label.item()  # no label shift
        assert value == pytest.approx((pixel / 255 - 0.5) / 0.5, abs=1e-6)
        assert torch.all(image == value)
    custom = FaceDataModule(
        train=f"imagefolder:{root}",
        image_size=8,
        batch_size=6,
        num_workers=0,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        image_folder_cache_dir=str(tmp_path),
    )
    images, labels = next(iter(custom.train_dataloader()))
    pixel = round((images[0, 0, 0, 0].item() * 0.229 + 0.485) * 255)
    expected = [(pixel / 255 - m) / s for m, s in ((0.485, 0.229), (0.456, 0.224), (0.406, 0.225))]
    assert images[0, :, 0, 0].tolist() == pytest.approx(expected, abs=1e-5)


def test_training_flip_mirrors_and_verification_never_flips(tmp_path: Path) -> None:
    root = tmp_path / "faces" / "a"
    root.mkdir(parents=True)
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[:, 3:] = 255  # right half white
    Image.fromarray(pixels).save(root / "0.png")
    Image.fromarray(pixels).save(root / "1.png")
    write_bin(tmp_path / "p.bin", [(root / "0.png").read_bytes()] * 2, [True])
    data = FaceDataModule(
        train=f"imagefolder:{tmp_path / 'faces'}",
        val_sets={"bin": f"bin:{tmp_path / 'p.bin'}"},
        image_size=(4, 6),
        flip_probability=1.0,
        batch_size=2,
        num_workers=0,
        image_folder_cache_dir=str(tmp_path),
    )
    images, _ = next(iter(data.train_dataloader()))
    assert images[:, :, :, :3].eq(1).all() and images[:, :, :, 3:].eq(-1).all()  # mirrored
    data.setup("fit")
    first, second, _ = next(iter(data.val_dataloader()[0]))
    assert first[:, :, :, :3].eq(-1).all() and second[:, :, :, 3:].eq(1).all()  # as stored


def test_lfw_module_crops_the_centre_like_an_independent_pil_pipeline(lfw_root: Path) -> None:
    data = FaceDataModule(
        train="lfw:dev_train", data_root=str(lfw_root.parent), min_images_per_identity=2, batch_size=4, num_workers=0
    )
    assert data.num_classes == 1184
    assert data.verification_set_names == ["lfw_dev_test"]
    data.setup("fit")
    loader = data.val_dataloader()[0]
    assert len(loader.dataset) == 1000
    first, _, issame = next(iter(loader))
    assert tuple(first.shape) == (4, 3, 112, 112) and issame[0].item() is True
    # Reference: Pillow crops the central 150x150 of the 250x250 image and resizes it (antialiased bilinear).
    pair = loader.dataset.pairs[0]
    path = lfw_root / "lfw-deepfunneled" / f"{pair.name1}/{pair.name1}_{pair.number1:04d}.jpg"
    reference = Image.open(path).convert("RGB").crop((50, 50, 200, 200)).resize((112, 112), Image.BILINEAR)
    expected = torch.from_numpy(np.asarray(reference, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
    difference = (first[0] - expected).abs()
    assert difference.mean() < 1.5 / 127.5 and difference.max() < 12 / 127.5


def test_data_root_from_environment_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    color_tree(tmp_path / "sets" / "faces", identities=2, per_identity=2)
    monkeypatch.setenv("LIGHTNING_MARGIN_DATA", str(tmp_path / "sets"))
    data = FaceDataModule(train="imagefolder:faces", num_workers=0, image_folder_cache_dir=str(tmp_path))
    assert data.data_root == tmp_path / "sets" and data.num_classes == 2
    monkeypatch.delenv("LIGHTNING_MARGIN_DATA")
    with pytest.raises(ValueError, match="set data_root, or the environment variable LIGHTNING_MARGIN_DATA"):
        FaceDataModule(train="lfw:dev_train", num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"training source 'lfw:dev_train'.*lfw-deepfunneled does not exist"):
        FaceDataModule(train="lfw:dev_train", data_root=str(tmp_path), num_workers=0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"train": "webface"}, "the kind must be one of synthetic, lfw, imagefolder, recordio"),
        ({"train": "lfw:train"}, "the LFW split must be one of dev_train, dev_test, 10fold"),
        ({"train": "synthetic:x"}, "needs a positive integer"),
        ({"val_sets": {"x": "imagefolder:/tmp"}}, "the kind must be one of synthetic, lfw, bin"),
        ({"val_sets": {"x": "bin:"}}, "'bin:PATH' needs a path"),
        ({"batch_size": 0}, "batch_size and val_batch_size must be >= 1"),
        ({"flip_probability": 2.0}, r"flip_probability must be in \[0, 1\]"),
        ({"image_size": 0}, "image_size must be a positive int"),
        ({"min_images_per_identity": 0}, "min_images_per_identity must be >= 1"),
        ({"random_shift": -1}, "random_shift must be >= 0"),
        ({"cache_in_memory": True}, "cache_in_memory=True needs normalize_on_device=True"),
    ],
)
def test_bad_settings_name_the_allowed_values(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaceDataModule(**{"num_workers": 0, **arguments})


def test_batch_larger_than_the_training_set_is_an_error() -> None:
    data = FaceDataModule(train="synthetic:2", batch_size=64, num_workers=0)
    with pytest.raises(ValueError, match="fewer than batch_size=64"):
        data.train_dataloader()


def broken_tree(root: Path) -> Path:
    color_tree(root, identities=3, per_identity=4)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (44, 44, 44)).save(buffer, format="JPEG")
    (root / "id02" / "9_truncated.jpg").write_bytes(buffer.getvalue()[:60])
    (root / "id01" / "9_garbage.png").write_bytes(b"not an image at all")
    return root


def test_corrupt_images_raise_naming_the_file_without_skipping(tmp_path: Path) -> None:
    root = broken_tree(tmp_path / "faces")
    data = FaceDataModule(
        train=f"imagefolder:{root}", image_size=8, batch_size=14, num_workers=0, image_folder_cache_dir=str(tmp_path)
    )
    with pytest.raises(CorruptImageError, match=r"cannot decode image .*(9_garbage\.png|9_truncated\.jpg)"):
        next(iter(data.train_dataloader()))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_corrupt_counts_across_workers_without_label_shift(tmp_path: Path, num_workers: int) -> None:
    root = broken_tree(tmp_path / "faces")
    data = FaceDataModule(
        train=f"imagefolder:{root}",
        image_size=8,
        batch_size=7,
        num_workers=num_workers,
        skip_corrupt=True,
        image_folder_cache_dir=str(tmp_path),
    )
    loader = data.train_dataloader()
    seen = 0
    with pytest.warns(CorruptImagesSkippedWarning, match="skipped 2 unreadable training image"):
        for images, labels in loader:  # 14 samples, 2 batches of 7, the 2 broken ones dropped
            seen += len(labels)
            pixels = torch.round((images[:, 0, 0, 0] + 1) * 127.5).long()
            assert torch.equal(pixels // 20, labels)  # every image still carries its own label
    assert seen == 12
    assert loader.skipped_last_epoch == 2 and data.skipped_images == 2


def test_lightning_can_inject_a_distributed_sampler(tmp_path: Path) -> None:
    data = FaceDataModule(train="synthetic:4", batch_size=4, num_workers=0, skip_corrupt=True)
    loader = data.train_dataloader()
    assert isinstance(loader, SkipReportingDataLoader)
    indices = []
    for rank in (0, 1):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=False)
        replaced = _update_dataloader(loader, sampler)
        assert isinstance(replaced, SkipReportingDataLoader) and replaced.skip_counter is data.skip_counter
        assert replaced.batch_size == 4 and replaced.collate_fn is loader.collate_fn
        indices.append(list(replaced.sampler))
    assert not set(indices[0]) & set(indices[1]) and len(indices[0]) + len(indices[1]) == 64


def test_pin_memory_follows_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    data = FaceDataModule(train="synthetic:2", batch_size=4, num_workers=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert data._pin_memory() is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert data.train_dataloader().pin_memory is False
    assert FaceDataModule(train="synthetic:2", num_workers=0, pin_memory=True)._pin_memory() is True


class TinyModel(LightningModule):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3 * 8 * 8, num_classes)
        self.validated: dict[int, int] = {}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        return torch.nn.functional.cross_entropy(self.layer(images.flatten(1)), labels)

    def validation_step(self, batch: tuple, batch_idx: int, dataloader_idx: int = 0) -> None:
        first, second, issame = batch
        assert first.shape == second.shape and issame.dtype == torch.bool
        self.validated[dataloader_idx] = self.validated.get(dataloader_idx, 0) + len(issame)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fit_with_lightning_reports_skips_and_validates_every_set(tmp_path: Path) -> None:
    root = broken_tree(tmp_path / "faces")
    data = FaceDataModule(
        train=f"imagefolder:{root}",
        val_sets={"first": "synthetic:6", "second": "synthetic:4"},
        image_size=8,
        batch_size=7,
        num_workers=0,
        skip_corrupt=True,
        image_folder_cache_dir=str(tmp_path),
    )
    model = TinyModel(data.num_classes)
    trainer = quiet_trainer(max_epochs=2, num_sanity_val_steps=0, default_root_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=data)
    reports = [str(w.message) for w in caught if issubclass(w.category, CorruptImagesSkippedWarning)]
    assert len(reports) == 2 and all("skipped 2 unreadable" in report for report in reports)  # once per epoch
    assert model.validated == {0: 12, 1: 8}  # 2 epochs x all pairs of each set, in order
    assert data.skipped_images == 4


def test_relative_paths_fall_back_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    color_tree(tmp_path / "here" / "faces", identities=3, per_identity=1)
    color_tree(tmp_path / "root" / "faces", identities=2, per_identity=1)
    monkeypatch.chdir(tmp_path / "here")
    monkeypatch.setenv("LIGHTNING_MARGIN_DATA", str(tmp_path / "root"))
    cache = str(tmp_path / "cache")
    # Under the data root first...
    assert FaceDataModule(train="imagefolder:faces", num_workers=0, image_folder_cache_dir=cache).num_classes == 2
    # ...and a path that exists only from the working directory is taken from there.
    (tmp_path / "here" / "faces").rename(tmp_path / "here" / "local")
    assert FaceDataModule(train="imagefolder:local", num_workers=0, image_folder_cache_dir=cache).num_classes == 3


def test_verification_batches_carry_the_pair_index_only_when_distributed() -> None:
    data = FaceDataModule(train="synthetic:2", val_sets={"s": "synthetic:6"}, image_size=8, num_workers=0)
    data.setup("fit")
    assert len(next(iter(data.val_dataloader()[0]))) == 3
    data.trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(root_device=torch.device("cpu")))
    loader = data.val_dataloader()[0]
    # Sampled like rank 1 of 2 would be: the indices say which pairs these are, in the set's order.
    sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=1, shuffle=False)
    first, _, issame, pair_index = next(iter(_update_dataloader(loader, sampler)))
    assert pair_index.tolist() == [1, 3, 5]
    plain = data.val_datasets()["s"]
    assert issame.tolist() == [plain.issame[i] for i in (1, 3, 5)]
    assert torch.equal(first[0], plain[1][0])


def test_normalize_on_device_ships_uint8_and_normalises_after_transfer_like_the_workers_would():
    from lightning_margin.data import FaceDataModule

    common = {
        "train": "synthetic:4",
        "val_sets": {"s": "synthetic:20"},
        "image_size": 16,
        "batch_size": 8,
        "num_workers": 0,
    }
    on_host = FaceDataModule(**common, flip_probability=0.0)
    on_device = FaceDataModule(**common, flip_probability=0.0, normalize_on_device=True)
    torch.manual_seed(0)
    host_images, host_labels = next(iter(on_host.train_dataloader()))
    torch.manual_seed(0)
    raw_images, raw_labels = next(iter(on_device.train_dataloader()))
    assert raw_images.dtype == torch.uint8 and torch.equal(raw_labels, host_labels)
    images, labels = on_device.on_after_batch_transfer((raw_images, raw_labels), 0)
    assert torch.equal(labels, raw_labels)
    # (x / 255 - 0.5) / 0.5, written out: the same tensor the per-image path produced.
    torch.testing.assert_close(images, raw_images.float() / 127.5 - 1.0, rtol=0, atol=1e-6)
    torch.testing.assert_close(images, host_images, rtol=0, atol=1e-6)
    pairs = next(iter(on_device.val_dataloader()[0]))
    normalised = on_device.on_after_batch_transfer(pairs, 0)
    assert normalised[0].dtype == torch.float32 and torch.equal(normalised[2], pairs[2])


def test_normalize_batch_flips_about_the_requested_fraction_and_only_left_right():
    from lightning_margin.data import normalize_batch

    images = torch.arange(4, dtype=torch.uint8).view(1, 1, 1, 4).repeat(2000, 3, 2, 1)
    torch.manual_seed(0)
    out = normalize_batch(images, flip_probability=0.3)
    flipped = out[:, 0, 0, 0] > out[:, 0, 0, -1]
    assert 0.26 < flipped.float().mean().item() < 0.34
    expected = torch.tensor([0.0, 1.0, 2.0, 3.0]) / 127.5 - 1.0
    torch.testing.assert_close(out[~flipped][:, 1, 1], expected.expand(int((~flipped).sum()), 4))
    torch.testing.assert_close(out[flipped][:, 2, 0], expected.flip(0).expand(int(flipped.sum()), 4))
    with pytest.raises(ValueError, match="uint8"):
        normalize_batch(images.float())


def test_cache_in_memory_serves_the_decoded_images_and_shifts_only_training_batches() -> None:
    from lightning_margin.data import InMemoryDataset

    common = {
        "train": "synthetic:4",
        "val_sets": {"s": "synthetic:12"},
        "image_size": 16,
        "batch_size": 8,
        "pin_memory": False,
    }
    plain = FaceDataModule(**common, num_workers=0, normalize_on_device=True)
    cached = FaceDataModule(
        **common, num_workers=0, normalize_on_device=True, cache_in_memory=True, random_shift=2, flip_probability=0.0
    )
    cached.setup("fit")
    assert isinstance(cached.train_set, InMemoryDataset) and cached.num_classes == 4
    for index in (0, 5, len(plain.train_set) - 1):
        image, label = plain.train_set[index]
        cached_image, cached_label = cached.train_set[index]
        assert torch.equal(cached_image, image) and int(cached_label) == label
    plain_pairs = next(iter(plain.val_dataloader()[0]))
    cached_pairs = next(iter(cached.val_dataloader()[0]))
    assert all(torch.equal(a, b) for a, b in zip(plain_pairs, cached_pairs, strict=True))
    # Verification batches are never shifted; training batches are (trainer.training).
    cached.trainer = SimpleNamespace(training=False)
    normalised = cached.on_after_batch_transfer(cached_pairs, 0)
    torch.testing.assert_close(normalised[0], cached_pairs[0].float() / 127.5 - 1.0, rtol=0, atol=1e-6)
    images, labels = next(iter(cached.train_dataloader()))
    cached.trainer = SimpleNamespace(training=True)
    torch.manual_seed(3)
    shifted, _ = cached.on_after_batch_transfer((images, labels), 0)
    unshifted = images.float() / 127.5 - 1.0
    moved = [not torch.equal(a, b) for a, b in zip(shifted, unshifted, strict=True)]
    assert sum(moved) >= len(moved) // 2  # 1 in 25 offsets is (0, 0)
