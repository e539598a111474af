"""``lfw_aligned:SPLIT``: LFW's people and pairs read from the aligned copy that ``data align`` makes.

The copy is built here for a few DevTest people from given landmarks (no detector needed) under a temporary data
root whose ``lfw/`` is the real one; the whole copy, when ``$LIGHTNING_MARGIN_DATA/lfw_aligned_112`` exists, is
checked to be complete for View 1's test pairs.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_margin.align import norm_crop
from lightning_margin.align.folder import REPORT_FILE, align_folder, list_images
from lightning_margin.data import FaceDataModule, build_verification_set, read_people_list
from lightning_margin.data.sources import (
    DATA_ENV,
    LFW_ALIGNED_FOLDER,
    default_verification_sets,
    source_alignment,
    source_crop,
    verification_set_name,
)
from lightning_margin.data.transforms import normalize

LANDMARKS = np.array([[106.0, 114.0], [144.0, 114.0], [125.0, 136.0], [109.0, 158.0], [141.0, 158.0]])


def test_the_kind_reads_aligned_faces_without_a_crop():
    assert source_alignment("lfw_aligned:dev_train") == "arcface" and source_alignment("lfw:dev_train") is None
    assert source_crop("lfw_aligned:dev_test", 100, 150, "verification") is None
    assert default_verification_sets("lfw_aligned:dev_train") == {"lfw_aligned_dev_test": "lfw_aligned:dev_test"}
    assert verification_set_name("lfw_aligned:10fold") == "lfw_aligned_10fold"
    with pytest.raises(ValueError, match="the LFW split must be one of dev_train, dev_test, 10fold"):
        FaceDataModule(train="lfw_aligned:train", num_workers=0)


def test_a_missing_copy_says_how_to_build_it(tmp_path):
    (tmp_path / "lfw").mkdir()
    with pytest.raises(
        FileNotFoundError, match=rf"{LFW_ALIGNED_FOLDER}, which does not exist.*lightning-margin data align"
    ):
        FaceDataModule(train="lfw_aligned:dev_train", data_root=str(tmp_path), num_workers=0)


@pytest.fixture(scope="module")
def partial_copy(lfw_root, tmp_path_factory) -> tuple[Path, list[str]]:
    """A data root: the real lfw/, and lfw_aligned_112/ holding the first DevTest people's crops."""
    root = tmp_path_factory.mktemp("data")
    (root / "lfw").symlink_to(lfw_root)
    photos = root / "photos"
    for person in read_people_list(lfw_root / "peopleDevTest.txt")[:3]:
        shutil.copytree(lfw_root / "lfw-deepfunneled" / person.name, photos / person.name)
    names = list_images(photos)
    points = " ".join(str(value) for value in LANDMARKS.ravel())
    (root / "points.txt").write_text("".join(f"{name} {points}\n" for name in names))
    align_folder(photos, root / LFW_ALIGNED_FOLDER, landmarks=root / "points.txt", progress=False)
    return root, names


def test_the_training_set_reads_the_aligned_crops(partial_copy, lfw_root):
    root, names = partial_copy
    # skip_corrupt: the people not aligned here have no crops; they are read (and skipped) only when drawn.
    data = FaceDataModule(
        train="lfw_aligned:dev_test",
        data_root=str(root),
        image_size=112,
        flip_probability=0.0,
        skip_corrupt=True,
        val_sets={},
        num_workers=0,
    )
    assert data.train_transform.crop_size is None
    people = data.train_set
    assert people.num_classes == 1711  # DevTest's people, as lfw:dev_test
    assert [relative for relative, _ in people.samples[: len(names)]] == names
    for index, relative in enumerate(names):
        image, _ = people[index]
        # norm_crop of the photo, stored as JPEG (quality 95), normalised the data module's way, no crop.
        buffer = io.BytesIO()
        norm_crop(Image.open(lfw_root / "lfw-deepfunneled" / relative), LANDMARKS).save(buffer, "JPEG", quality=95)
        expected = torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1)
        torch.testing.assert_close(image, normalize(expected), rtol=0, atol=1e-6)


def test_missing_crops_point_at_the_report(partial_copy):
    root, _ = partial_copy
    with pytest.raises(FileNotFoundError, match=rf"LFW image\(s\) named in the list are missing.*{REPORT_FILE}"):
        build_verification_set("lfw_aligned:dev_test", root, None)


def test_the_whole_copy_serves_view_1s_test_pairs():
    base = os.environ.get(DATA_ENV)
    if not base or not (Path(base) / LFW_ALIGNED_FOLDER).is_dir():
        pytest.skip(f"needs the aligned copy ${DATA_ENV}/{LFW_ALIGNED_FOLDER} (built by lightning-margin data align)")
    pairs = build_verification_set("lfw_aligned:dev_test", Path(base), None)  # every image present
    first, second, _ = pairs[0]
    assert len(pairs) == 1000 and first.shape == second.shape == (3, 112, 112)
