"""Identity-per-folder training sets: labels, the listing cache and its invalidation."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_margin.data import FaceImageFolder, scan_image_folder


def make_tree(root: Path, layout: dict[str, list[str]]) -> Path:
    for identity, files in layout.items():
        (root / identity).mkdir(parents=True, exist_ok=True)
        for name in files:
            Image.new("RGB", (6, 4), (len(identity), 7, 9)).save(root / identity / name)
    return root


def age(*paths: Path, seconds: float = 60) -> None:
    """Move modification times into the past, as for a data set that is not being written right now."""
    past = time.time() - seconds
    for path in paths:
        os.utime(path, (past, past))


def test_labels_follow_sorted_folder_names(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "faces", {"zed": ["b.png", "a.jpg"], "amy": ["1.png"], "empty": [], "mo": ["x.bmp"]})
    (root / "zed" / "notes.txt").write_text("not an image")
    (root / "zed" / ".hidden.png").write_bytes(b"")
    (root / "stray.jpg").write_bytes(b"")  # files directly in root are not identities
    faces = FaceImageFolder(root, use_cache=False)
    assert faces.classes == ["amy", "mo", "zed"]  # the empty folder is not a class
    assert faces.samples == [("amy/1.png", 0), ("mo/x.bmp", 1), ("zed/a.jpg", 2), ("zed/b.png", 2)]
    image, label = faces[3]
    assert label == 2 and image.dtype == torch.uint8 and tuple(image.shape) == (3, 4, 6)
    assert image[:, 0, 0].tolist() == [3, 7, 9]  # PNG is lossless: the pixel written for "zed"


def test_min_images_per_identity_relabels_densely(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "faces", {"a": ["1.png"], "b": ["1.png", "2.png"], "c": ["1.png", "2.png"]})
    faces = FaceImageFolder(root, min_images_per_identity=2, use_cache=False)
    assert faces.classes == ["b", "c"] and faces.num_classes == 2
    assert [label for _, label in faces.samples] == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="no identity has 3 or more images"):
        FaceImageFolder(root, min_images_per_identity=3, use_cache=False)


def test_cache_is_reused_and_refreshed_per_changed_folder(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "faces", {f"id{i}": ["1.png", "2.png"] for i in range(5)})
    cache = tmp_path / "cache"
    age(*root.iterdir())
    first = scan_image_folder(root, cache_dir=cache)
    assert first.rescanned == 5
    cache_files = list(cache.glob("*.json"))
    assert len(cache_files) == 1 and json.loads(cache_files[0].read_text())["root"] == str(root.resolve())

    second = scan_image_folder(root, cache_dir=cache)
    assert second.rescanned == 0 and second.samples == first.samples

    # A file added to one identity folder changes that folder's mtime: only it is listed again.
    Image.new("RGB", (2, 2)).save(root / "id3" / "3.png")
    age(root / "id3", seconds=30)
    third = scan_image_folder(root, cache_dir=cache)
    assert third.rescanned == 1
    assert ("id3/3.png", 3) in third.samples and len(third.samples) == 11

    # A new identity folder appears; a removed one disappears.
    make_tree(root, {"id9": ["1.png"]})
    (root / "id0" / "1.png").unlink()
    (root / "id0" / "2.png").unlink()
    (root / "id0").rmdir()
    age(root / "id9", seconds=30)
    fourth = scan_image_folder(root, cache_dir=cache)
    assert fourth.rescanned == 1
    assert fourth.classes == ["id1", "id2", "id3", "id4", "id9"]


def test_recently_modified_folders_are_not_trusted_from_the_cache(tmp_path: Path) -> None:
    # A folder changed within the file system's timestamp granularity of the scan keeps the same mtime; the cache
    # must not freeze its listing (git's "racily clean" problem).
    root = make_tree(tmp_path / "faces", {"a": ["1.png"]})
    scan_image_folder(root, cache_dir=tmp_path / "cache")
    stamp = os.stat(root / "a").st_mtime_ns
    Image.new("RGB", (2, 2)).save(root / "a" / "2.png")
    os.utime(root / "a", ns=(stamp, stamp))  # same mtime as when it was cached
    again = scan_image_folder(root, cache_dir=tmp_path / "cache")
    assert again.samples == [("a/1.png", 0), ("a/2.png", 0)]


def test_use_cache_false_writes_nothing_and_bad_roots_are_named(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "faces", {"a": ["1.png"]})
    scan_image_folder(root, cache_dir=tmp_path / "cache", use_cache=False)
    assert not (tmp_path / "cache").exists()
    with pytest.raises(FileNotFoundError, match="image folder not found: .*nowhere"):
        FaceImageFolder(tmp_path / "nowhere")
    (tmp_path / "blank" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        FaceImageFolder(tmp_path / "blank", use_cache=False)


def test_corrupt_cache_is_ignored(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "faces", {"a": ["1.png"]})
    scan_image_folder(root, cache_dir=tmp_path / "cache")
    for cache_file in (tmp_path / "cache").glob("*.json"):
        cache_file.write_text("{broken")
    assert scan_image_folder(root, cache_dir=tmp_path / "cache").samples == [("a/1.png", 0)]
