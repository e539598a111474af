"""Data source strings (``"lfw:dev_train"``, ``"recordio:faces_emore/train.rec"``, ...), their kinds, and the data root.

:class:`~lightning_margin.data.datamodule.FaceDataModule` is configured with short strings so a YAML config stays
readable. ``KIND`` or ``KIND:ARGUMENT``:

* ``synthetic[:N]``: training, :class:`SyntheticFaces` with N identities (default 10); verification,
  :class:`SyntheticPairs` with N pairs (default 200).
* ``lfw:SPLIT``: training, :class:`LFWPeople` of ``<data root>/lfw``; verification, :class:`LFWPairs`.
* ``lfw_aligned:SPLIT``: the same people and pairs, read from the ArcFace-aligned 112x112 copy
  ``<data root>/lfw_aligned_112`` (:data:`LFW_ALIGNED_FOLDER`, built once by :data:`LFW_ALIGN_COMMAND`); no crop.
* ``imagefolder:PATH``: training only, :class:`FaceImageFolder`.
* ``recordio:PATH``: training only, :class:`RecordIODataset`; ``PATH`` is the ``.rec`` file or the folder holding
  ``train.rec``.
* ``bin:PATH``: verification only, :class:`VerificationBinDataset`.

``SPLIT`` is ``dev_train``, ``dev_test`` or ``10fold``. A relative ``PATH`` is looked up under the data root when
one is set, then in the working directory. The data root is the ``data_root`` setting, or else the environment
variable ``LIGHTNING_MARGIN_DATA``: the folder that holds ``lfw/`` (and, by convention, other sets).

Every rule that depends on the kind lives in its :class:`SourceKind`, registered with :func:`register_source_kind`:
how the argument is checked, the training and verification datasets, the centre crop of its images
(:func:`source_crop`), the alignment its images went through (:func:`source_alignment`), the verification sets a
training run on it gets by default (:func:`default_verification_sets`) and the name a verification set of it is
reported under (:func:`verification_set_name`). The data module, the
embedder's preprocessing, ``verify`` and ``publish`` ask these functions; a new kind (an importer, a benchmark) is one
more registration.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from torch.utils.data import Dataset

from lightning_margin.data.image_folder import FaceImageFolder
from lightning_margin.data.lfw import LFW_SPLITS, LFWPairs, LFWPeople
from lightning_margin.data.recordio import RecordIODataset
from lightning_margin.data.synthetic import SyntheticFaces, SyntheticPairs
from lightning_margin.data.verification_bin import VerificationBinDataset

__all__ = [
    "DATA_ENV",
    "LFW_ALIGNED_FOLDER",
    "LFW_ALIGN_COMMAND",
    "Source",
    "SourceKind",
    "SourceOptions",
    "build_training_set",
    "build_verification_set",
    "default_verification_sets",
    "get_source_kind",
    "list_source_kinds",
    "parse_pairs",
    "parse_source",
    "register_source_kind",
    "resolve_data_root",
    "source_alignment",
    "source_crop",
    "verification_set_name",
]

#: Environment variable naming the folder that holds ``lfw/`` (used when ``data_root`` is not set).
DATA_ENV = "LIGHTNING_MARGIN_DATA"
#: The aligned copy of LFW under the data root that ``lfw_aligned:SPLIT`` reads: ArcFace 112x112 crops of
#: ``lfw/lfw-deepfunneled``, same ``Name/Name_NNNN.jpg`` layout, with ``landmarks.tsv`` and ``report.tsv``.
LFW_ALIGNED_FOLDER = "lfw_aligned_112"
#: The command that builds it once (``{data}``: the data root); ``--select center``: the person named is the face in
#: the middle of each LFW image, even where a larger face stands beside.
LFW_ALIGN_COMMAND = (
    "lightning-margin data align {data}/lfw/lfw-deepfunneled {data}/" + LFW_ALIGNED_FOLDER + " --select center"
)

Role = Literal["training", "verification"]
#: Which crop setting a kind's images get: ``"lfw_crop_size"``, ``"crop_size"``, or ``None`` (no crop).
CropSetting = Literal["lfw_crop_size", "crop_size"] | None


class Source(NamedTuple):
    """A parsed source string: ``kind`` and its (possibly empty) ``argument``."""

    kind: str
    argument: str


@dataclass(frozen=True)
class SourceOptions:
    """What building a dataset may need besides the source string (the data module's settings).

    Attributes:
        data_root: From :func:`resolve_data_root`.
        transform: Applied to each decoded image.
        image_size: Side of generated images (``synthetic``).
        min_images_per_identity: Drop identities with fewer images (LFW and image folders).
        check_files: For LFW, verify up front that every listed image exists.
        cache_dir: The image folder listing cache (``None``: the default).
    """

    data_root: Path | None = None
    transform: Callable[[Any], Any] | None = None
    image_size: int | tuple[int, int] = 112
    min_images_per_identity: int = 1
    check_files: bool = True
    cache_dir: str | None = None


# (source string, argument, options) -> dataset
DatasetBuilder = Callable[[str, str, SourceOptions], Dataset]


@dataclass(frozen=True)
class SourceKind:
    """One kind of data source and every rule that depends on it.

    Attributes:
        name: The ``KIND`` of ``KIND:ARGUMENT``, lowercase.
        check: ``check(spec, argument)`` raises ``ValueError`` for a malformed argument.
        training: Builds the training set (items ``(image, label)``, a ``num_classes`` attribute); ``None``: the
            kind is not a training source.
        verification: Builds the pair set (items ``(image1, image2, issame)``); ``None``: not a verification source.
        crop: The centre crop its images get, for training and evaluation alike (see :func:`source_crop`).
        alignment: The alignment its images went through (a name of :mod:`lightning_margin.align`'s registry, e.g.
            ``"arcface"``), ``None`` for images that are not aligned faces: an embedder trained on it records it and
            aligns photos the same way (see :func:`source_alignment`).
        default_verification_sets: ``argument -> {name: source}``, the verification sets of a training run on this
            kind when none are configured.
        set_name: ``argument -> name`` of a verification set of this kind named by its source only.
        hub_dataset: The Hub dataset id that model cards list for this kind (``None``: none).
        title: ``(set name, argument) -> readable name`` of a set of this kind (model cards); ``None``:
            ``"NAME (KIND)"``.
        split: Whether the argument is a split of the dataset (recorded as the card's ``dataset_split``).
    """

    name: str
    check: Callable[[str, str], None]
    training: DatasetBuilder | None = None
    verification: DatasetBuilder | None = None
    crop: CropSetting = "crop_size"
    alignment: str | None = None
    default_verification_sets: Callable[[str], dict[str, str]] = field(default=lambda argument: {})
    set_name: Callable[[str], str] | None = None
    hub_dataset: str | None = None
    title: Callable[[str, str], str] | None = None
    split: bool = False


_KINDS: dict[str, SourceKind] = {}


def register_source_kind(kind: SourceKind) -> SourceKind:
    """Make a :class:`SourceKind` available to every source string (data module, ``verify``, ``publish``).

    Example:
        >>> get_source_kind("bin").crop, get_source_kind("synthetic").crop
        ('crop_size', None)
    """
    if kind.name != kind.name.lower() or not kind.name.isidentifier():
        raise ValueError(f"source kind names are lowercase identifiers, got {kind.name!r}")
    if kind.name in _KINDS and _KINDS[kind.name] != kind:
        raise ValueError(f"a source kind named {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def list_source_kinds(role: Role | None = None) -> list[str]:
    """Names of the registered kinds (for ``role`` only, if given), in registration order.

    Example:
        >>> list_source_kinds("verification")
        ['synthetic', 'lfw', 'bin', 'lfw_aligned']
    """
    _check_role(role)
    return [name for name, kind in _KINDS.items() if role is None or _builder(kind, role) is not None]


def get_source_kind(name: str) -> SourceKind:
    """The registered kind ``name``; ``ValueError`` listing the registered kinds otherwise."""
    try:
        return _KINDS[name]
    except KeyError:
        raise ValueError(f"unknown source kind {name!r}; the kinds are {', '.join(_KINDS)}") from None


def _check_role(role: str | None) -> None:
    if role not in (None, "training", "verification"):
        raise ValueError(f"`role` must be 'training' or 'verification', got {role!r}")


def _builder(kind: SourceKind, role: Role) -> DatasetBuilder | None:
    return kind.training if role == "training" else kind.verification


def parse_source(spec: str, role: Role = "training") -> Source:
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
    allowed = list_source_kinds(role)
    kind, _, argument = spec.strip().partition(":")
    kind = kind.lower()
    if kind not in allowed:
        raise ValueError(
            f"unknown {role} source {spec!r}: the kind must be one of {', '.join(allowed)} (e.g. 'lfw:dev_train')"
        )
    _KINDS[kind].check(spec, argument)
    return Source(kind, argument)


def source_crop(spec: str, crop_size: int | None, lfw_crop_size: int, role: Role = "training") -> int | None:
    """The centre crop (pixels) of a source's images before resizing: the one rule for training and evaluation.

    LFW's 250x250 deep-funneled images get ``lfw_crop_size`` (the face sits in the centre), synthetic faces no crop,
    every other kind ``crop_size`` (``None``: pre-aligned faces, no crop).

    Example:
        >>> source_crop("lfw:dev_test", None, 150, "verification"), source_crop("bin:x.bin", 100, 150, "verification")
        (150, 100)
    """
    crop = _KINDS[parse_source(spec, role).kind].crop
    return lfw_crop_size if crop == "lfw_crop_size" else crop_size if crop == "crop_size" else None


def source_alignment(spec: str, role: Role = "training") -> str | None:
    """The alignment a source's images went through (``None``: not aligned faces); what an embedder trained on the
    source records, so that :meth:`~lightning_margin.FaceEmbedder.embed` aligns photos the same way.

    Example:
        >>> source_alignment("lfw_aligned:dev_train"), source_alignment("lfw:dev_train")
        ('arcface', None)
    """
    return _KINDS[parse_source(spec, role).kind].alignment


def default_verification_sets(train: str) -> dict[str, str]:
    """The verification sets a training source gets when none are configured, ``{name: source}``.

    Example:
        >>> default_verification_sets("lfw:dev_train"), default_verification_sets("recordio:x.rec")
        ({'lfw_dev_test': 'lfw:dev_test'}, {})
    """
    kind, argument = parse_source(train, "training")
    return dict(_KINDS[kind].default_verification_sets(argument))


def verification_set_name(spec: str) -> str:
    """The name a verification set is reported under when only its source is given.

    Example:
        >>> verification_set_name("lfw:dev_test"), verification_set_name("bin:/data/agedb_30.bin")
        ('lfw_dev_test', 'agedb_30')
    """
    kind, argument = parse_source(spec, "verification")
    name = _KINDS[kind].set_name
    return name(argument) if name is not None else kind


def parse_pairs(specs: Sequence[str]) -> dict[str, str]:
    """``["lfw:dev_test", "agedb=bin:agedb_30.bin"]`` -> ``{"lfw_dev_test": "lfw:dev_test", "agedb": "bin:..."}``.

    A plain source is named like the data module names its sets (``lfw:dev_test`` -> ``lfw_dev_test``,
    ``bin:path/agedb_30.bin`` -> ``agedb_30``, ``synthetic:N`` -> ``synthetic``); ``NAME=SOURCE`` names it.

    Example:
        >>> parse_pairs(["lfw:dev_test", "mine=bin:/data/cfp_fp.bin"])
        {'lfw_dev_test': 'lfw:dev_test', 'mine': 'bin:/data/cfp_fp.bin'}
    """
    sets: dict[str, str] = {}
    for spec in specs:
        name, separator, source = spec.partition("=")
        if not separator:
            name, source = "", spec
        default_name = verification_set_name(source)  # also validates a named source
        name = name or default_name
        if name in sets:
            raise ValueError(f"two verification sets are named {name!r}; name them with NAME=SOURCE")
        sets[name] = source
    return sets


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
    options = SourceOptions(data_root, transform, image_size, min_images_per_identity, check_files, cache_dir)
    return _KINDS[kind].training(spec, argument, options)  # type: ignore[misc]  (parse_source checked the role)


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
    options = SourceOptions(data_root, transform, image_size)
    return _KINDS[kind].verification(spec, argument, options)  # type: ignore[misc]  (parse_source checked the role)


# ---- the built-in kinds -----------------------------------------------------------------------------------------


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


def _check_count(spec: str, argument: str) -> None:
    if argument and (not argument.isdigit() or int(argument) < 1):
        raise ValueError(f"{spec!r}: 'synthetic:N' needs a positive integer N")


_LFW_TITLES = {"dev_test": "LFW View 1 DevTest", "dev_train": "LFW View 1 DevTrain", "10fold": "LFW View 2 (10 folds)"}


def _check_lfw_split(spec: str, argument: str) -> None:
    if argument not in LFW_SPLITS:
        raise ValueError(f"{spec!r}: the LFW split must be one of {', '.join(LFW_SPLITS)} (e.g. 'lfw:dev_test')")


def _check_path(spec: str, argument: str) -> None:
    if not argument:
        kind = spec.strip().partition(":")[0].lower()
        raise ValueError(f"{spec!r}: '{kind}:PATH' needs a path")


register_source_kind(
    SourceKind(
        "synthetic",
        check=_check_count,
        training=lambda spec, argument, options: SyntheticFaces(
            num_classes=int(argument or 10), image_size=options.image_size, transform=options.transform
        ),
        verification=lambda spec, argument, options: SyntheticPairs(
            num_pairs=int(argument or 200), image_size=options.image_size, transform=options.transform
        ),
        crop=None,  # generated at the model's input size: nothing to crop
        default_verification_sets=lambda argument: {"synthetic": "synthetic"},
    )
)
register_source_kind(
    SourceKind(
        "lfw",
        check=_check_lfw_split,
        training=lambda spec, argument, options: LFWPeople(
            _lfw_root(options.data_root, spec),
            argument,
            transform=options.transform,
            min_images_per_identity=options.min_images_per_identity,
            check_files=options.check_files,
        ),
        verification=lambda spec, argument, options: LFWPairs(
            _lfw_root(options.data_root, spec), argument, transform=options.transform
        ),
        crop="lfw_crop_size",
        # View 1: DevTest holds people DevTrain does not.
        default_verification_sets=lambda argument: {"lfw_dev_test": "lfw:dev_test"} if argument == "dev_train" else {},
        set_name=lambda argument: f"lfw_{argument}",
        hub_dataset="lfw",
        title=lambda name, argument: _LFW_TITLES.get(argument, name),
        split=True,
    )
)


register_source_kind(
    SourceKind(
        "imagefolder",
        check=_check_path,
        training=lambda spec, argument, options: FaceImageFolder(
            _path(argument, options.data_root),
            transform=options.transform,
            min_images_per_identity=options.min_images_per_identity,
            cache_dir=options.cache_dir,
        ),
    )
)


def _recordio(spec: str, argument: str, options: SourceOptions) -> Dataset:
    path = _path(argument, options.data_root)
    return RecordIODataset(path / "train.rec" if path.is_dir() else path, transform=options.transform)


register_source_kind(SourceKind("recordio", check=_check_path, training=_recordio))
register_source_kind(
    SourceKind(
        "bin",
        check=_check_path,
        verification=lambda spec, argument, options: VerificationBinDataset(
            _path(argument, options.data_root), transform=options.transform
        ),
        set_name=lambda argument: Path(argument).stem,
        title=lambda name, argument: f"{name} (bin:{Path(argument).name})",
    )
)


def _lfw_aligned(role: Role) -> DatasetBuilder:
    """The builder of ``lfw_aligned:SPLIT`` sets: LFW's lists, images from the aligned copy."""

    def build(spec: str, argument: str, options: SourceOptions) -> Dataset:
        root = _lfw_root(options.data_root, spec)
        folder = root.parent / LFW_ALIGNED_FOLDER
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{spec!r} reads the aligned copy of LFW, {folder}, which does not exist; build it once (pip install "
                f"-e '.[align]'; about 10 CPU-minutes) with: {LFW_ALIGN_COMMAND.format(data=root.parent)} --workers 2"
            )
        try:
            if role == "training":
                return LFWPeople(
                    root,
                    argument,
                    transform=options.transform,
                    min_images_per_identity=options.min_images_per_identity,
                    check_files=options.check_files,
                    images_folder=folder,
                )
            return LFWPairs(root, argument, transform=options.transform, images_folder=folder)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error} ({folder / 'report.tsv'} says why data align made no crop)") from None

    return build


register_source_kind(
    SourceKind(
        "lfw_aligned",
        check=_check_lfw_split,
        training=_lfw_aligned("training"),
        verification=_lfw_aligned("verification"),
        crop=None,  # aligned 112x112 faces: resized to the model's input, never cropped
        alignment="arcface",
        default_verification_sets=lambda argument: (
            {"lfw_aligned_dev_test": "lfw_aligned:dev_test"} if argument == "dev_train" else {}
        ),
        set_name=lambda argument: f"lfw_aligned_{argument}",
    )
)
