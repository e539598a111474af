"""LFW: list parsing against the published counts (real data), validation errors naming file and line (fake data)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_margin.data import (
    CorruptImageError,
    LFWPairs,
    LFWPeople,
    lfw_image_path,
    read_pairs_list,
    read_people_list,
)

# ---- real LFW (skipped with a reason when $LIGHTNING_MARGIN_DATA/lfw is absent) -----------------------------------


def test_people_lists_match_the_published_counts(lfw_root: Path) -> None:
    # LFW README: DevTrain 4,038 people / 9,525 images (1,184 with 2+ images, 6,671 images); DevTest 1,711 / 3,708;
    # View 2: 5,749 people, 13,233 images in 10 folds.
    dev_train = LFWPeople(lfw_root, "dev_train")
    assert (dev_train.num_classes, len(dev_train)) == (4038, 9525)
    assert dev_train.fold is None
    two_plus = LFWPeople(lfw_root, "dev_train", min_images_per_identity=2)
    assert (two_plus.num_classes, len(two_plus)) == (1184, 6671)
    dev_test = LFWPeople(lfw_root, "dev_test")
    assert (dev_test.num_classes, len(dev_test)) == (1711, 3708)
    assert not set(dev_train.classes) & set(dev_test.classes)  # View 1 sides are disjoint
    view2 = LFWPeople(lfw_root, "10fold", check_files=False)
    assert (view2.num_classes, len(view2)) == (5749, 13233)
    assert sorted(set(view2.fold)) == list(range(10))


def test_pair_lists_match_the_published_counts(lfw_root: Path) -> None:
    for split, folds, per_side in (("dev_train", 1, 1100), ("dev_test", 1, 500), ("10fold", 10, 300)):
        pairs = LFWPairs(lfw_root, split, check_files=split != "10fold")
        assert len(pairs) == folds * 2 * per_side
        assert sum(pairs.issame) == folds * per_side
        if split == "10fold":
            assert [pairs.fold.count(fold) for fold in range(10)] == [600] * 10
            # Each fold: 300 same-person pairs, then 300 different-person pairs.
            assert pairs.issame[:300] == [True] * 300 and pairs.issame[300:600] == [False] * 300
        else:
            assert pairs.fold is None
    entries = read_pairs_list(lfw_root / "pairsDevTest.txt")
    assert all(e.name1 == e.name2 for e in entries if e.issame)
    assert all(e.name1 != e.name2 for e in entries if not e.issame)


def test_items_are_the_listed_images(lfw_root: Path) -> None:
    people = LFWPeople(lfw_root, "dev_test")
    index = next(i for i, (path, _) in enumerate(people.samples) if path.startswith("Abdullah_Gul/"))
    image, label = people[index]
    assert people.classes[label] == "Abdullah_Gul"
    reference = np.array(Image.open(lfw_root / "lfw-deepfunneled" / people.samples[index][0]).convert("RGB"))
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 250, 250)
    assert torch.equal(image, torch.from_numpy(reference).permute(2, 0, 1))
    pairs = LFWPairs(lfw_root, "dev_test")
    first, second, issame = pairs[0]  # "Abdullah_Gul 13 14" is the first line of pairsDevTest.txt
    assert issame is True
    for got, number in ((first, 13), (second, 14)):
        expected = np.array(Image.open(lfw_root / "lfw-deepfunneled" / lfw_image_path("Abdullah_Gul", number)))
        assert torch.equal(got, torch.from_numpy(expected).permute(2, 0, 1))


# ---- fake LFW trees for validation errors --------------------------------------------------------------------------


def jpeg_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buffer, format="JPEG")
    return buffer.getvalue()


def fake_lfw(root: Path, people: dict[str, int]) -> Path:
    for name, count in people.items():
        (root / "lfw-deepfunneled" / name).mkdir(parents=True)
        for number in range(1, count + 1):
            (root / "lfw-deepfunneled" / lfw_image_path(name, number)).write_bytes(jpeg_bytes(10 * number))
    lines = [str(len(people))] + [f"{name}\t{count}" for name, count in people.items()]
    (root / "peopleDevTrain.txt").write_text("\n".join(lines) + "\n")
    return root


def test_people_header_count_mismatch_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "people.txt").write_text("3\nAnn\t2\nBob\t1\n")
    with pytest.raises(ValueError, match=r"people\.txt:1: the count says 3 people, the file has only 2"):
        read_people_list(tmp_path / "people.txt")
    (tmp_path / "people.txt").write_text("1\nAnn\t2\nBob\t1\n")
    with pytest.raises(ValueError, match=r"people\.txt:3: unexpected extra line 'Bob 1'"):
        read_people_list(tmp_path / "people.txt")
    (tmp_path / "people.txt").write_text("2\nAnn\t2\nBob\tmany\n")
    with pytest.raises(ValueError, match=r"people\.txt:3: the image count must be a positive integer, got 'many'"):
        read_people_list(tmp_path / "people.txt")
    (tmp_path / "people.txt").write_text("2\nAnn\t2\nAnn\t1\n")
    with pytest.raises(ValueError, match=r"people\.txt:3: Ann is listed again \(first on line 2\)"):
        read_people_list(tmp_path / "people.txt")


def test_multi_fold_people_list(tmp_path: Path) -> None:
    (tmp_path / "people.txt").write_text("2\n2\nAnn\t2\nBob\t1\n1\nCy\t4\n")
    entries = read_people_list(tmp_path / "people.txt")
    assert [(e.name, e.num_images, e.fold, e.line) for e in entries] == [
        ("Ann", 2, 0, 3),
        ("Bob", 1, 0, 4),
        ("Cy", 4, 1, 6),
    ]
    (tmp_path / "people.txt").write_text("3\n2\nAnn\t2\nBob\t1\n1\nCy\t4\n")
    with pytest.raises(ValueError, match="announces 3 folds, the file ends after 2"):
        read_people_list(tmp_path / "people.txt")


def test_pairs_list_validation(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text("2\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\nBob\t1\t2\nCy\t1\tAnn\t2\n")
    entries = read_pairs_list(path)
    assert [(e.issame, e.fold, e.line) for e in entries] == [(True, 0, 2), (False, 0, 3), (True, 1, 4), (False, 1, 5)]
    path.write_text("2\nAnn\t1\t2\nAnn\t1\tBob\t1\n")
    with pytest.raises(ValueError, match=r"pairs\.txt:1: the header announces 1 fold\(s\) of 2 same \+ 2 different"):
        read_pairs_list(path)
    path.write_text("1\nAnn\t1\tBob\t1\nAnn\t1\t2\n")
    with pytest.raises(ValueError, match=r"pairs\.txt:2: expected a same-person line"):
        read_pairs_list(path)
    path.write_text("1\nAnn\t1\t\u00b2\nAnn\t1\tBob\t1\n")  # a superscript two is a digit to str.isdigit
    with pytest.raises(ValueError, match=r"pairs\.txt:2: an image number must be a positive integer"):
        read_pairs_list(path)
    path.write_text("1\nAnn\t1\t2\nAnn\t0\tBob\t1\n")
    with pytest.raises(ValueError, match=r"pairs\.txt:3: an image number must be a positive integer, got '0'"):
        read_pairs_list(path)


def test_missing_image_is_named_with_list_file_and_line(tmp_path: Path) -> None:
    root = fake_lfw(tmp_path, {"Ann": 2, "Bob": 3})
    (root / "lfw-deepfunneled" / lfw_image_path("Bob", 2)).unlink()
    with pytest.raises(FileNotFoundError, match=r"Bob_0002\.jpg \(named on .*peopleDevTrain\.txt:3\)"):
        LFWPeople(root, "dev_train")
    # Without the up-front check the error comes when the image is read, still naming the list line.
    people = LFWPeople(root, "dev_train", check_files=False)
    assert people.num_classes == 2 and len(people) == 5
    with pytest.raises(FileNotFoundError, match=r"Bob_0002\.jpg \(listed in .*peopleDevTrain\.txt:3\)"):
        people[3]


def test_corrupt_image_is_named_with_list_line(tmp_path: Path) -> None:
    root = fake_lfw(tmp_path, {"Ann": 2})
    (root / "lfw-deepfunneled" / lfw_image_path("Ann", 2)).write_bytes(jpeg_bytes(5)[:40])
    people = LFWPeople(root, "dev_train")
    assert people[0][1] == 0
    with pytest.raises(CorruptImageError, match=r"Ann_0002\.jpg \(listed in .*peopleDevTrain\.txt:2\)"):
        people[1]


def test_labels_follow_list_order_after_the_minimum_filter(tmp_path: Path) -> None:
    root = fake_lfw(tmp_path, {"Ann": 1, "Bob": 3, "Cy": 2})
    people = LFWPeople(root, "dev_train", min_images_per_identity=2)
    assert people.classes == ["Bob", "Cy"]
    assert people.samples == [
        ("Bob/Bob_0001.jpg", 0),
        ("Bob/Bob_0002.jpg", 0),
        ("Bob/Bob_0003.jpg", 0),
        ("Cy/Cy_0001.jpg", 1),
        ("Cy/Cy_0002.jpg", 1),
    ]


def test_bad_split_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of 'dev_train', 'dev_test', '10fold'; got 'train'"):
        LFWPeople(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="lfw-deepfunneled does not exist"):
        LFWPairs(tmp_path, "dev_test")


def test_view1_pairs_are_interleaved_so_every_consecutive_fold_mixes_both_kinds(lfw_root):
    from lightning_margin.data.lfw import read_pairs_list

    pairs = LFWPairs(lfw_root, "dev_test", check_files=False)
    in_file = read_pairs_list(lfw_root / "pairsDevTest.txt")
    assert pairs.issame[:4] == [True, False, True, False]
    assert sorted(map(repr, pairs.pairs)) == sorted(map(repr, in_file))  # the same pairs, reordered
    assert [p for p in pairs.pairs if p.issame] == [p for p in in_file if p.issame]  # each kind keeps its order
    folds = [pairs.issame[i * 100 : (i + 1) * 100] for i in range(10)]
    assert all(sum(fold) == 50 for fold in folds)
    view2 = LFWPairs(lfw_root, "10fold", check_files=False)
    assert view2.pairs == read_pairs_list(lfw_root / "pairs.txt")  # View 2 keeps the official fold order
