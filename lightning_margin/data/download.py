"""Download LFW deep-funneled (images and official list files) on a machine with internet access.

LFW's original host (``vis-www.cs.umass.edu/lfw``) is gone; the official site now lives in the GitHub repository
``umass-vis-lfw/umass-vis-lfw.github.io``, which holds the deep-funneled images one file each in
``images_deepfunneled/<Name>/<Name>_NNNN.jpg`` (a single archive would exceed GitHub's file size limit) beside the
site's files. :func:`download_lfw` fetches, from ``base_url`` (by default that repository at a pinned commit):

1. the seven official list files, each verified against its md5 sum (:data:`LFW_LIST_MD5`: the sums LFW published,
   which ``torchvision.datasets.LFWPeople`` checks too);
2. the images: one request per image named in ``lfw-names.txt`` (13,233 files, resumable: present files are kept),
   or, with ``archive_url``, one ``.tgz`` holding ``lfw-deepfunneled/`` (e.g. a mirror of the original
   ``lfw-deepfunneled.tgz``, md5 :data:`LFW_DEEPFUNNELED_ARCHIVE_MD5`), extracted with path checks.

The result is the layout :class:`~lightning_margin.data.lfw.LFWPeople` reads: ``root/lfw-deepfunneled/`` and the list
files. Point ``$LIGHTNING_MARGIN_DATA`` at ``root``'s parent (e.g. ``download_lfw("data/lfw")`` then
``LIGHTNING_MARGIN_DATA=data``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from lightning_margin.data.lfw import LFW_IMAGES_FOLDER, lfw_image_path

__all__ = [
    "LFW_BASE_URL",
    "LFW_COMMIT",
    "LFW_DEEPFUNNELED_ARCHIVE_MD5",
    "LFW_LIST_MD5",
    "LFW_REPOSITORY",
    "download_lfw",
    "md5sum",
]

#: The GitHub repository that now hosts LFW's site and files.
LFW_REPOSITORY = "umass-vis-lfw/umass-vis-lfw.github.io"
#: The commit downloads are pinned to (reproducible: later pushes to the repository cannot change the files).
LFW_COMMIT = "2a620cd8cceb10430f8c7012fe9fa5f0837759e9"
#: Where the list files (at the top) and ``images_deepfunneled/`` are fetched from.
LFW_BASE_URL = f"https://raw.githubusercontent.com/{LFW_REPOSITORY}/{LFW_COMMIT}/"
#: md5 sums of the official list files, as published with LFW (and checked by torchvision's ``datasets/lfw.py``).
LFW_LIST_MD5 = {
    "lfw-names.txt": "a6d0a479bd074669f656265a6e693f6d",
    "pairs.txt": "9f1ba174e4e1c508ff7cdf10ac338a7d",
    "pairsDevTest.txt": "5132f7440eb68cf58910c8a45a2ac10b",
    "pairsDevTrain.txt": "4f27cbf15b2da4a85c1907eb4181ad21",
    "people.txt": "450f0863dd89e85e73936a6d71a3474b",
    "peopleDevTest.txt": "e4bf5be0a43b5dcd9dc5ccfcb8fb19c5",
    "peopleDevTrain.txt": "54eaac34beb6d042ed3a7d883e247a21",
}
#: md5 of the original ``lfw-deepfunneled.tgz`` (111 MB), for ``archive_url`` mirrors of it.
LFW_DEEPFUNNELED_ARCHIVE_MD5 = "68331da3eb755a505a502b5aacb3c201"
_IMAGES_REMOTE_FOLDER = "images_deepfunneled/"
_USER_AGENT = "lightning-margin (LFW download helper)"


def md5sum(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """The md5 hex digest of a file.

    Example:
        >>> md5sum("lfw/pairs.txt")  # doctest: +SKIP
        '9f1ba174e4e1c508ff7cdf10ac338a7d'
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, destination: Path, timeout: float, attempts: int = 3) -> None:
    """Download ``url`` to ``destination`` through a temporary file (never leaves a partial file)."""
    temporary = destination.with_name(f"{destination.name}.{os.getpid()}.part")
    for attempt in range(attempts):
        try:
            request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
            with urllib.request.urlopen(request, timeout=timeout) as response, open(temporary, "wb") as file:
                shutil.copyfileobj(response, file, 1 << 20)
            os.replace(temporary, destination)
            return
        except urllib.error.HTTPError as error:
            temporary.unlink(missing_ok=True)
            if error.code < 500 or attempt == attempts - 1:  # 4xx will not change on retry
                raise OSError(f"downloading {url} failed: HTTP {error.code} {error.reason}") from error
        except (urllib.error.URLError, OSError) as error:
            temporary.unlink(missing_ok=True)
            if attempt == attempts - 1:
                raise OSError(f"downloading {url} failed: {error}") from error
        time.sleep(2**attempt)


def _fetch_verified(url: str, destination: Path, expected_md5: str | None, timeout: float) -> None:
    if destination.is_file() and (expected_md5 is None or md5sum(destination) == expected_md5):
        return
    _fetch(url, destination, timeout)
    if expected_md5 is not None:
        actual = md5sum(destination)
        if actual != expected_md5:
            destination.unlink()
            raise ValueError(
                f"{url}: md5 {actual} does not match the expected {expected_md5}; the file was deleted (the "
                "download is corrupt, or the server does not hold the official file)"
            )


def _read_names(path: Path) -> list[tuple[str, int]]:
    names = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not (fields[1].isascii() and fields[1].isdigit()):
            raise ValueError(f"{path}:{number}: expected 'Name<TAB>count', got {line!r}")
        names.append((fields[0], int(fields[1])))
    return names


def _extract_archive(archive: Path, root: Path) -> None:
    """Extract the ``lfw-deepfunneled/`` members of a ``.tgz``; any member escaping ``root`` is an error."""
    with tarfile.open(archive, "r:*") as tar:
        members = []
        for member in tar.getmembers():
            name = PurePosixPath(member.name)
            if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                raise ValueError(f"{archive}: refusing unsafe archive member {member.name!r}")
            if name.parts and name.parts[0] == LFW_IMAGES_FOLDER:
                members.append(member)
        if not members:
            raise ValueError(f"{archive}: the archive holds no {LFW_IMAGES_FOLDER}/ folder")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12: the standard library's own checks too
            tar.extractall(root, members=members, filter="data")
        else:  # pragma: no cover - old patch releases; members were checked above
            tar.extractall(root, members=members)


def download_lfw(
    root: str | Path,
    base_url: str = LFW_BASE_URL,
    archive_url: str | None = None,
    archive_md5: str | None = None,
    list_md5: Mapping[str, str] = LFW_LIST_MD5,
    num_threads: int = 8,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download LFW deep-funneled into ``root`` (``lfw-deepfunneled/`` + official list files), verifying the lists.

    Re-running it completes an interrupted download: list files with the right md5 and images already present are
    kept.

    Args:
        root: Destination folder (created).
        base_url: Where the list files and ``images_deepfunneled/<Name>/<Name>_NNNN.jpg`` are served (ends with
            ``/``).
        archive_url: Fetch the images as one ``.tgz`` holding ``lfw-deepfunneled/`` instead of one by one.
        archive_md5: Expected md5 of that archive (:data:`LFW_DEEPFUNNELED_ARCHIVE_MD5` for the original one);
            ``None`` skips the check.
        list_md5: List files to fetch, with their md5 sums; must include ``lfw-names.txt`` (it lists the images).
        num_threads: Parallel image downloads.
        timeout: Seconds before a stalled request fails (each request is tried 3 times).
        progress: Show a progress bar.

    Returns:
        ``root``.

    Raises:
        ValueError: if a list file's (or the archive's) md5 does not match, or the archive is unsafe or lacks
            ``lfw-deepfunneled/``.
        OSError: if a download fails.
        FileNotFoundError: if images named in ``lfw-names.txt`` are still missing at the end.

    Example:
        >>> download_lfw("data/lfw")  # doctest: +SKIP
        PosixPath('data/lfw')
    """
    if "lfw-names.txt" not in list_md5:
        raise ValueError("list_md5 must include lfw-names.txt, which names every image")
    if not base_url.endswith("/"):
        base_url += "/"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, expected in list_md5.items():
        _fetch_verified(base_url + name, root / name, expected, timeout)
    images = root / LFW_IMAGES_FOLDER
    wanted = [
        lfw_image_path(name, number)
        for name, count in _read_names(root / "lfw-names.txt")
        for number in range(1, count + 1)
    ]
    if archive_url is not None:
        archive = root / (PurePosixPath(archive_url.split("?")[0]).name or "lfw-deepfunneled.tgz")
        _fetch_verified(archive_url, archive, archive_md5, timeout)
        _extract_archive(archive, root)
        archive.unlink()
    else:
        missing = [relative for relative in wanted if not (images / relative).is_file()]

        def fetch_image(relative: str) -> None:
            destination = images / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            _fetch(base_url + _IMAGES_REMOTE_FOLDER + relative, destination, timeout)
            with open(destination, "rb") as file:
                if file.read(2) != b"\xff\xd8":  # an HTML error page served with status 200 is not a JPEG
                    destination.unlink()
                    raise ValueError(f"{base_url + _IMAGES_REMOTE_FOLDER + relative} is not a JPEG image")

        with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
            for _ in tqdm(
                pool.map(fetch_image, missing), total=len(missing), desc="LFW images", unit="img", disable=not progress
            ):
                pass
    absent = [relative for relative in wanted if not (images / relative).is_file()]
    if absent:
        raise FileNotFoundError(
            f"{len(absent)} image(s) listed in lfw-names.txt are missing under {images}, e.g. {absent[0]}"
        )
    return root
