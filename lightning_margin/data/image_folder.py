"""One folder per identity (``root/<identity>/<image>``) as a training set, with a file-list cache.

Listing a million images in tens of thousands of folders takes minutes on network or spinning disks, and a training
run (and each DDP rank) would pay it at every start. :func:`scan_image_folder` keeps the listing in a small JSON
index and, on the next run, lists only the root folder and ``stat``s each identity folder: a folder whose
modification time changed (a file added, removed or renamed in it) is listed again, all others come from the cache.
The cache lives in ``cache_dir`` (default ``$XDG_CACHE_HOME/lightning_margin/image_folder``, i.e.
``~/.cache/lightning_margin/image_folder``), not next to the data, which is often read-only; its file name is a hash
of the root's absolute path. Editing an image in place (same name) needs no re-index: only names are cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from torch.utils.data import Dataset

from lightning_margin.data.decode import read_file_bytes
from lightning_margin.data.transforms import decode_and_transform

__all__ = ["IMAGE_EXTENSIONS", "FaceImageFolder", "ImageFolderIndex", "default_cache_dir", "scan_image_folder"]

#: File name endings (case-insensitive) taken as images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_CACHE_VERSION = 1
_RACY_WINDOW_NS = 3_000_000_000


class ImageFolderIndex(NamedTuple):
    """The listing of an identity-per-folder tree."""

    classes: list[str]
    samples: list[tuple[str, int]]
    rescanned: int


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lightning_margin/image_folder`` (``~/.cache/...`` when the variable is unset).

    Example:
        >>> default_cache_dir().name
        'image_folder'
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lightning_margin" / "image_folder"


def _list_images(folder: str, extensions: tuple[str, ...]) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(
            entry.name
            for entry in entries
            if entry.name.lower().endswith(extensions) and entry.is_file() and not entry.name.startswith(".")
        )


def _cache_file(root: Path, cache_dir: Path, extensions: tuple[str, ...]) -> Path:
    key = hashlib.sha256(f"{root}\0{','.join(extensions)}".encode()).hexdigest()[:24]
    return cache_dir / f"{key}.json"


def _load_cache(cache_file: Path, root: Path) -> dict[str, Any]:
    try:
        cached = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(cached, dict) or cached.get("version") != _CACHE_VERSION or cached.get("root") != str(root):
        return {}
    folders = cached.get("folders")
    return folders if isinstance(folders, dict) else {}


def scan_image_folder(
    root: str | Path,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> ImageFolderIndex:
    """List ``root/<identity>/<image>``: identities sorted by folder name, images sorted by file name.

    Folders without images are skipped (they would be classes with no samples); files directly in ``root``, hidden
    files and nested folders are ignored.

    Args:
        root: The folder holding one sub-folder per identity.
        extensions: File name endings taken as images (case-insensitive).
        cache_dir: Where the index cache lives (default :func:`default_cache_dir`).
        use_cache: Read and update the cache; ``False`` lists everything and writes nothing.

    Returns:
        ``classes`` (folder names, indexed by label), ``samples`` (``("identity/file", label)``) and ``rescanned``,
        the number of identity folders that were listed (the rest came from the cache).

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
        ValueError: if it holds no images in identity folders.

    Example:
        >>> index = scan_image_folder("casia_webface_aligned")  # doctest: +SKIP
        >>> index.classes[index.samples[0][1]]  # doctest: +SKIP
        '0000045'
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    extensions = tuple(sorted(extension.lower() for extension in extensions))
    cache_file = _cache_file(root, Path(cache_dir) if cache_dir is not None else default_cache_dir(), extensions)
    cached = _load_cache(cache_file, root) if use_cache else {}
    folders: dict[str, dict[str, Any]] = {}
    rescanned = 0
    with os.scandir(root) as entries:
        identity_entries = [entry for entry in entries if entry.is_dir() and not entry.name.startswith(".")]
    # File systems stamp modification times with a coarse clock (often a few milliseconds), so a folder changed in
    # the same tick as this scan would keep its cached mtime and the change would be missed next time. As git does
    # for "racily clean" files, folders modified within the last few seconds are cached without an mtime, which
    # makes the next scan list them again.
    racy_after = time.time_ns() - _RACY_WINDOW_NS
    for entry in identity_entries:
        mtime = entry.stat().st_mtime_ns
        previous = cached.get(entry.name)
        if isinstance(previous, dict) and previous.get("mtime_ns") == mtime and isinstance(previous.get("files"), list):
            folders[entry.name] = previous
        else:
            files = _list_images(entry.path, extensions)
            folders[entry.name] = {"mtime_ns": mtime if mtime < racy_after else None, "files": files}
            rescanned += 1
    if use_cache and (rescanned or len(folders) != len(cached)):
        payload = {"version": _CACHE_VERSION, "root": str(root), "folders": folders}
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            temporary = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(payload, separators=(",", ":")), encoding="utf-8")
            os.replace(temporary, cache_file)  # atomic: DDP ranks scanning at once never read a half-written file
        except OSError as error:
            warnings.warn(f"could not write the image folder cache {cache_file}: {error}", stacklevel=2)
    classes = sorted(name for name, folder in folders.items() if folder["files"])
    if not classes:
        raise ValueError(f"{root} holds no images ({', '.join(extensions)}) in identity sub-folders")
    samples = [(f"{name}/{file}", label) for label, name in enumerate(classes) for file in folders[name]["files"]]
    return ImageFolderIndex(classes, samples, rescanned)


class FaceImageFolder(Dataset):
    """Training images stored one folder per identity (``root/<identity>/<image>``), e.g. aligned CASIA-WebFace.

    Items are ``(image, label)``: the decoded RGB ``uint8`` tensor ``[3, H, W]`` (or ``transform`` of it) and the
    identity's index among the sorted folder names. The listing is cached (see :func:`scan_image_folder`).

    Args:
        root: The folder holding one sub-folder per identity.
        transform: Applied to each decoded image.
        min_images_per_identity: Drop identities with fewer images (labels are then re-numbered densely).
        cache_dir: Where the listing cache lives (default :func:`default_cache_dir`).
        use_cache: Set ``False`` to list the folder without reading or writing a cache.
        extensions: File name endings taken as images.

    Attributes:
        classes: Identity folder names, indexed by label.
        samples: ``("identity/file", label)`` pairs.

    Example:
        >>> faces = FaceImageFolder("casia_webface_aligned")  # doctest: +SKIP
        >>> image, label = faces[0]  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Any], Any] | None = None,
        min_images_per_identity: int = 1,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        if min_images_per_identity < 1:
            raise ValueError(f"min_images_per_identity must be >= 1, got {min_images_per_identity}")
        self.root = Path(root)
        self._root = str(self.root)
        self.transform = transform
        index = scan_image_folder(self.root, extensions, cache_dir, use_cache)
        counts = [0] * len(index.classes)
        for _, label in index.samples:
            counts[label] += 1
        kept = [label for label, count in enumerate(counts) if count >= min_images_per_identity]
        if not kept:
            raise ValueError(f"{self.root}: no identity has {min_images_per_identity} or more images")
        relabel = {old: new for new, old in enumerate(kept)}
        self.classes = [index.classes[label] for label in kept]
        self.samples = [(path, relabel[label]) for path, label in index.samples if label in relabel]

    @property
    def num_classes(self) -> int:
        """Number of identities (labels are ``0 .. num_classes - 1``)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        relative, label = self.samples[index]
        path = os.path.join(self._root, relative)
        return decode_and_transform(read_file_bytes(path), path, self.transform), label

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, images={len(self)}, classes={self.num_classes})"
