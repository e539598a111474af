"""LFW download helper against a small LFW-shaped site served from 127.0.0.1; official md5 sums checked locally."""

from __future__ import annotations

import functools
import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from lightning_margin.data import LFW_LIST_MD5, LFWPairs, LFWPeople, download_lfw, lfw_image_path, md5sum

PEOPLE = {"Ann_A": 2, "Bob_B": 1, "Cy_C": 2}
LISTS = {
    "lfw-names.txt": "Ann_A\t2\nBob_B\t1\nCy_C\t2\n",
    "peopleDevTrain.txt": "2\nAnn_A\t2\nBob_B\t1\n",
    "peopleDevTest.txt": "1\nCy_C\t2\n",
    "people.txt": "2\n2\nAnn_A\t2\nBob_B\t1\n1\nCy_C\t2\n",
    "pairsDevTrain.txt": "1\nAnn_A\t1\t2\nAnn_A\t1\tBob_B\t1\n",
    "pairsDevTest.txt": "1\nCy_C\t1\t2\nCy_C\t2\tAnn_A\t1\n",
    "pairs.txt": "1\t1\nAnn_A\t1\t2\nBob_B\t1\tCy_C\t1\n",
}


def jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (value, 0, 0)).save(buffer, format="JPEG")
    return buffer.getvalue()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An LFW-shaped site (list files, images_deepfunneled/, an archive) on an ephemeral 127.0.0.1 port."""
    served = tmp_path / "site"
    served.mkdir()
    for name, text in LISTS.items():
        (served / name).write_text(text)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for value, (name, count) in enumerate(PEOPLE.items()):
            for number in range(1, count + 1):
                data = jpeg(40 * value + number)
                path = served / "images_deepfunneled" / lfw_image_path(name, number)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                member = tarfile.TarInfo(f"lfw-deepfunneled/{lfw_image_path(name, number)}")
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    (served / "lfw-deepfunneled.tgz").write_bytes(archive.getvalue())
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def sums() -> dict[str, str]:
    return {name: hashlib.md5(text.encode()).hexdigest() for name, text in LISTS.items()}


def assert_same_tree(root: Path, served: Path) -> None:
    for name in LISTS:
        assert (root / name).read_bytes() == (served / name).read_bytes()
    for name, count in PEOPLE.items():
        for number in range(1, count + 1):
            relative = lfw_image_path(name, number)
            assert (root / "lfw-deepfunneled" / relative).read_bytes() == (
                served / "images_deepfunneled" / relative
            ).read_bytes()


def test_downloads_images_one_by_one_and_readers_accept_the_result(site: tuple[str, Path], tmp_path: Path) -> None:
    url, served = site
    root = download_lfw(tmp_path / "lfw", base_url=url, list_md5=sums(), num_threads=2, progress=False)
    assert_same_tree(root, served)
    assert LFWPeople(root, "dev_train").num_classes == 2
    assert len(LFWPairs(root, "10fold")) == 2
    # Resuming: a second run keeps what is there and fetches only what is missing.
    (root / "lfw-deepfunneled" / lfw_image_path("Cy_C", 2)).unlink()
    download_lfw(root, base_url=url, list_md5=sums(), progress=False)
    assert_same_tree(root, served)


def test_downloads_an_archive_with_md5(site: tuple[str, Path], tmp_path: Path) -> None:
    url, served = site
    archive_md5 = md5sum(served / "lfw-deepfunneled.tgz")
    root = download_lfw(
        tmp_path / "lfw",
        base_url=url,
        archive_url=url + "lfw-deepfunneled.tgz",
        archive_md5=archive_md5,
        list_md5=sums(),
        progress=False,
    )
    assert_same_tree(root, served)
    assert not (root / "lfw-deepfunneled.tgz").exists()


def test_list_file_with_wrong_md5_is_rejected_and_deleted(site: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = site
    wrong = {**sums(), "pairs.txt": "0" * 32}
    with pytest.raises(ValueError, match=r"pairs\.txt: md5 [0-9a-f]{32} does not match the expected 0{32}"):
        download_lfw(tmp_path / "lfw", base_url=url, list_md5=wrong, progress=False)
    assert not (tmp_path / "lfw" / "pairs.txt").exists()


def test_missing_file_on_the_server_is_an_error(site: tuple[str, Path], tmp_path: Path) -> None:
    url, served = site
    (served / "images_deepfunneled" / lfw_image_path("Bob_B", 1)).unlink()
    with pytest.raises(OSError, match=r"Bob_B_0001\.jpg failed: HTTP 404"):
        download_lfw(tmp_path / "lfw", base_url=url, list_md5=sums(), progress=False)


def test_unsafe_archive_member_is_refused(site: tuple[str, Path], tmp_path: Path) -> None:
    url, served = site
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        member = tarfile.TarInfo("lfw-deepfunneled/../../escaped.txt")
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    (served / "evil.tgz").write_bytes(evil.getvalue())
    with pytest.raises(ValueError, match="refusing unsafe archive member"):
        download_lfw(tmp_path / "lfw", base_url=url, archive_url=url + "evil.tgz", list_md5=sums(), progress=False)
    assert not (tmp_path / "escaped.txt").exists()


def test_official_md5_sums_match_the_reference_copy(lfw_root: Path) -> None:
    # The sums torchvision's datasets/lfw.py checks; the shared LFW copy was taken from the official repository.
    assert {name: md5sum(lfw_root / name) for name in LFW_LIST_MD5} == LFW_LIST_MD5
