"""Data source strings (``"lfw:dev_train"``, ``"recordio:faces_emore/train.rec"``, ...) and the data root.

:class:`~lightning_margin.data.datamodule.FaceDataModule` is configured with short strings so a YAML config stays
readable. ``KIND`` or ``KIND:ARGUMENT``:

* ``synthetic[:N]``: training, :class:`SyntheticFaces` with N identities (default 10); verification,
  :class:`SyntheticPairs` with N pairs (default 200).
* ``lfw:SPLIT``: training, :class:`LFWPeople` of ``<data root>/lfw``; verification, :class:`LFWPairs`.
* ``imagefolder:PATH``: training only, :class:`FaceImageFolder`.
* ``recordio:PATH``: training only, :class:`RecordIODataset`; ``PATH`` is the ``.rec`` file or the folder holding
  ``train.rec``.
* ``bin:PATH``: verification only, :class:`VerificationBinDataset`.

``SPLIT`` is ``dev_train``, ``dev_test`` or ``10fold``. A relative ``PATH`` is looked up under the data root when
one is set, then in the working directory. The data root is the ``data_root`` setting, or else the environment
variable ``LIGHTNING_MARGIN_DATA``: the folder that holds ``lfw/`` (and, by convention, other sets).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from torch.utils.data import Dataset

from lightning_margin.data.image_folder import FaceImageFolder
from lightning_margin.data.lfw import LFW_SPLITS, LFWPairs, LFWPeople
from lightning_margin.data.recordio import RecordIODataset
from lightning_margin.data.synthetic import SyntheticFaces, SyntheticPairs
from lightning_margin.data.verification_bin import VerificationBinDataset

__all__ = [
    "DATA_ENV",
    "TRAINING_KINDS",
    "VERIFICATION_KINDS",
    "Source",
    "build_training_set",
    "build_verification_set",
    "parse_source",
    "resolve_data_root",
]

#: Environment variable naming the folder that holds ``lfw/`` (used when ``data_root`` is not set).
DATA_ENV = "LIGHTNING_MARGIN_DATA"
#: Source kinds accepted for training.
TRAINING_KINDS = ("synthetic", "lfw", "imagefolder", "recordio")
#: Source kinds accepted for verification.
VERIFICATION_KINDS = ("synthetic", "lfw", "bin")


class Source(NamedTuple):
    """A parsed source string: ``kind`` and its (possibly empty) ``argument``."""

    kind: str
    argument: str


def parse_source(spec: str, role: str = "training") -> Source:
    """Parse and validate a source string for ``role`` ``"training"`` or ``"verification"``.

    Args:
        spec: ``KIND`` or ``KIND:ARGUMENT`` (see the module docstring).
        role: Which kinds are allowed.

    Returns:
        The :class:`Source`.

    Raises:
        ValueError: naming the allowed kinds, splits or the malformed part.

    Example:
        >>> parse_source("recordio:/data/faces_emore/train.rec")
        Source(kind='recordio', argument='/data/faces_emore/train.rec')
    """
    allowed = TRAINING_KINDS if role == "training" else VERIFICATION_KINDS
    kind, _, argument = spec.strip().partition(":")
    kind = kind.lower()
    if kind not in allowed:
        raise ValueError(
            f"unknown {role} source {spec!r}: the kind must be one of {', '.join(allowed)} (e.g. 'lfw:dev_train')"
        )
    if kind == "synthetic" and argument and (not argument.isdigit() or int(argument) < 1):
        raise ValueError(f"{spec!r}: 'synthetic:N' needs a positive integer N")
    if kind == "lfw" and argument not in LFW_SPLITS:
        raise ValueError(f"{spec!r}: the LFW split must be one of {', '.join(LFW_SPLITS)} (e.g. 'lfw:dev_test')")
    if kind in ("imagefolder", "recordio", "bin") and not argument:
        raise ValueError(f"{spec!r}: '{kind}:PATH' needs a path")
    return Source(kind, argument)


def resolve_data_root(data_root: str | os.PathLike[str] | None) -> Path | None:
    """The explicit ``data_root``, else ``$LIGHTNING_MARGIN_DATA``, else ``None``.

    Example:
        >>> str(resolve_data_root("/data"))
        '/data'
    """
    if data_root:
        return Path(data_root).expanduser()
    from_environment = os.environ.get(DATA_ENV)
    return Path(from_environment).expanduser() if from_environment else None


def _lfw_root(data_root: Path | None, spec: str) -> Path:
    if data_root is None:
        raise ValueError(
            f"source {spec!r} needs the data root: set data_root, or the environment variable {DATA_ENV}, to the "
            "folder that holds lfw/"
        )
    return data_root / "lfw"


def _path(argument: str, data_root: Path | None) -> Path:
    path = Path(argument).expanduser()
    if path.is_absolute() or data_root is None:
        return path
    under_root = data_root / path
    # Under the data root first (configs stay portable); a path that exists only relative to the working directory
    # is taken from there, so a local file is not shadowed by a data root that happens to be set.
    return path if not under_root.exists() and path.exists() else under_root


def build_training_set(
    spec: str,
    data_root: Path | None,
    transform: Callable[[Any], Any] | None,
    image_size: int | tuple[int, int] = 112,
    min_images_per_identity: int = 1,
    check_files: bool = True,
    cache_dir: str | None = None,
) -> Dataset:
    """Build the training dataset a source string names; it has a ``num_classes`` attribute.

    Args:
        spec: A training source (see the module docstring).
        data_root: From :func:`resolve_data_root`.
        transform: Applied to each decoded image.
        image_size: Side of the generated images for ``synthetic``.
        min_images_per_identity: Drop identities with fewer images (LFW and image folders).
        check_files: For LFW, verify up front that every listed image exists.
        cache_dir: The image folder listing cache (``None``: the default).

    Returns:
        The dataset; items ``(image, label)``.

    Example:
        >>> build_training_set("synthetic:4", None, None, image_size=16).num_classes
        4
    """
    kind, argument = parse_source(spec, "training")
    if kind == "synthetic":
        return SyntheticFaces(num_classes=int(argument or 10), image_size=image_size, transform=transform)
    if kind == "lfw":
        return LFWPeople(
            _lfw_root(data_root, spec),
            argument,
            transform=transform,
            min_images_per_identity=min_images_per_identity,
            check_files=check_files,
        )
    if kind == "imagefolder":
        return FaceImageFolder(
            _path(argument, data_root),
            transform=transform,
            min_images_per_identity=min_images_per_identity,
            cache_dir=cache_dir,
        )
    path = _path(argument, data_root)
    return RecordIODataset(path / "train.rec" if path.is_dir() else path, transform=transform)


def build_verification_set(
    spec: str,
    data_root: Path | None,
    transform: Callable[[Any], Any] | None,
    image_size: int | tuple[int, int] = 112,
) -> Dataset:
    """Build the pair dataset a verification source string names; items ``(image1, image2, issame)``.

    Example:
        >>> len(build_verification_set("synthetic:20", None, None, image_size=16))
        20
    """
    kind, argument = parse_source(spec, "verification")
    if kind == "synthetic":
        return SyntheticPairs(num_pairs=int(argument or 200), image_size=image_size, transform=transform)
    if kind == "lfw":
        return LFWPairs(_lfw_root(data_root, spec), argument, transform=transform)
    return VerificationBinDataset(_path(argument, data_root), transform=transform)
