"""Labeled Faces in the Wild (LFW), deep-funneled: people lists for training, pair lists for verification.

Huang, Ramesh, Berg, Learned-Miller, "Labeled Faces in the Wild: A Database for Studying Face Recognition in
Unconstrained Environments", UMass Amherst TR 07-49, 2007; deep funneling: Huang, Mattar, Lee, Learned-Miller,
"Learning to Align from Scratch", NIPS 2012.

Expected layout of ``root`` (what :func:`~lightning_margin.data.download.download_lfw` creates)::

    root/lfw-deepfunneled/<Name>/<Name>_<NNNN>.jpg     13,233 images, 250x250, 5,749 people
    root/peopleDevTrain.txt, peopleDevTest.txt         View 1 people (4,038 / 1,711)
    root/pairsDevTrain.txt, pairsDevTest.txt           View 1 pairs (1,100 + 1,100 / 500 + 500)
    root/people.txt, pairs.txt                         View 2: 10 folds (of people / of 300 + 300 pairs)

Splits: ``"dev_train"`` and ``"dev_test"`` are View 1 (disjoint people: train on DevTrain, verify on DevTest),
``"10fold"`` is View 2 (its people overlap View 1, so a model trained on DevTrain must not be scored on it).

List formats (tab separated; image numbers are 1-based, ``_%04d`` in file names):

* people lists: a header line with the number of people, then ``Name<TAB>count`` lines; ``people.txt`` starts with
  the number of folds and gives each fold as its own count line followed by its people.
* pair lists: a header ``pairs`` (one fold) or ``folds<TAB>pairs``; each fold has ``pairs`` same-person lines
  ``Name<TAB>i<TAB>j`` followed by ``pairs`` different-person lines ``NameA<TAB>i<TAB>NameB<TAB>j``.

Parsing validates every count and line; errors (``ValueError``) name the list file and the 1-based line number, as an
editor numbers lines. Image counts and numbers are at most 9999 (four-digit file names) and names must be usable as
folder names (no path separators or control characters). Missing images are reported with the list file and line that
names them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from torch.utils.data import Dataset

from lightning_margin.data.decode import CorruptImageError, read_file_bytes
from lightning_margin.data.text_lines import read_text_lines
from lightning_margin.data.transforms import decode_and_transform

__all__ = [
    "LFW_IMAGES_FOLDER",
    "LFW_PAIRS_FILES",
    "LFW_PEOPLE_FILES",
    "LFW_SPLITS",
    "LFWPairs",
    "LFWPeople",
    "PairEntry",
    "PersonEntry",
    "first_lfw_images",
    "lfw_image_path",
    "read_pairs_list",
    "read_people_list",
]

#: Folder of the deep-funneled images inside the LFW root (the name of the official archive's folder).
LFW_IMAGES_FOLDER = "lfw-deepfunneled"
#: The accepted ``split`` values.
LFW_SPLITS = ("dev_train", "dev_test", "10fold")
#: People list file of each split.
LFW_PEOPLE_FILES = {"dev_train": "peopleDevTrain.txt", "dev_test": "peopleDevTest.txt", "10fold": "people.txt"}
#: Pair list file of each split.
LFW_PAIRS_FILES = {"dev_train": "pairsDevTrain.txt", "dev_test": "pairsDevTest.txt", "10fold": "pairs.txt"}


def first_lfw_images(root: str | os.PathLike[str], count: int) -> list[Path]:
    """The first ``count`` photos of ``root/lfw-deepfunneled``, people and photos in name order (a fixed sample for
    tests and benchmarks that need real faces, read without listing all 5,749 folders when ``count`` is small).

    Example:
        >>> [path.name for path in first_lfw_images("lfw", 2)]  # doctest: +SKIP
        ['AJ_Cook_0001.jpg', 'AJ_Lamas_0001.jpg']
    """
    folder = Path(root) / LFW_IMAGES_FOLDER
    paths: list[Path] = []
    for name in sorted(os.listdir(folder)):
        paths.extend(sorted((folder / name).glob("*.jpg")))
        if len(paths) >= count:
            break
    return paths[:count]


class PersonEntry(NamedTuple):
    """One ``Name<TAB>count`` line of a people list."""

    name: str
    num_images: int
    fold: int
    line: int


class PairEntry(NamedTuple):
    """One line of a pairs list: two images (1-based numbers) and whether they show the same person."""

    name1: str
    number1: int
    name2: str
    number2: int
    issame: bool
    fold: int
    line: int


def lfw_image_path(name: str, number: int) -> str:
    """Relative path of image ``number`` (1-based) of person ``name``: ``Name/Name_0003.jpg``.

    Example:
        >>> lfw_image_path("George_W_Bush", 10)
        'George_W_Bush/George_W_Bush_0010.jpg'
    """
    return f"{name}/{name}_{number:04d}.jpg"


#: Image numbers are written with four digits (``_%04d``): a larger count or number is a corrupt line, not a person
#: with 10,000 photos (LFW's largest identity has 530), and would make a dataset index billions of paths.
_MAX_IMAGE_NUMBER = 9999
#: Header counts (people, folds, pairs) are compared with the lines that follow; this only bounds the parse.
_MAX_COUNT = 10**9 - 1


def _quote(text: str, limit: int = 60) -> str:
    """``repr`` of a field or line for an error message, shortened so a garbled megabyte-long line stays readable."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def _read_lines(path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank lines as ``(line_number, fields)`` (:func:`read_text_lines`, fields split on whitespace); a blank
    line is allowed only at the end of the file."""
    lines = read_text_lines(path, what="LFW list file")
    while lines and not lines[-1][1].strip():
        lines.pop()
    parsed = []
    for number, line in lines:
        if not line.strip():
            raise ValueError(f"{path}:{number}: unexpected blank line")
        parsed.append((number, line.split()))
    if not parsed:
        raise ValueError(f"{path}:1: the list file is empty (expected a header count)")
    return parsed


def _positive_int(text: str, path: Path, line: int, what: str, maximum: int = _MAX_COUNT) -> int:
    # ASCII digits only (str.isdigit also accepts "²" and other scripts' digits, which int() then rejects or reads);
    # the length is checked before int(), which refuses numbers past 4300 digits with a message naming no file.
    if not (text.isascii() and text.isdigit()) or not text.strip("0"):
        raise ValueError(f"{path}:{line}: {what} must be a positive integer, got {_quote(text)}")
    if len(text.lstrip("0")) > len(str(maximum)) or int(text) > maximum:
        raise ValueError(f"{path}:{line}: {what} must be at most {maximum}, got {_quote(text)}")
    return int(text)


def _person_name(text: str, path: Path, line: int) -> str:
    # A name becomes a folder and file name (Name/Name_0001.jpg): a separator or "..", or a control character, would
    # read outside the images folder or fail inside open() with a message naming no list line.
    if text in (".", "..") or "/" in text or "\\" in text or not text.isprintable():
        raise ValueError(
            f"{path}:{line}: {_quote(text)} is not a usable person name (it names a folder: no path separators, "
            "'.' or '..', or control characters)"
        )
    return text


def read_people_list(path: str | Path) -> list[PersonEntry]:
    """Parse an LFW people list (``peopleDevTrain.txt``, ``peopleDevTest.txt`` or the 10-fold ``people.txt``).

    Args:
        path: The list file.

    Returns:
        One :class:`PersonEntry` per line, in file order; ``fold`` is 0 for single-set lists.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if a header count does not match the lines that follow, a line is not ``Name<TAB>count``, or a
            name repeats; the message names the file and line.

    Example:
        >>> people = read_people_list("lfw/peopleDevTrain.txt")  # doctest: +SKIP
        >>> len(people), sum(person.num_images for person in people)  # doctest: +SKIP
        (4038, 9525)
    """
    path = Path(path)
    lines = _read_lines(path)
    first_line, first = lines[0]
    if len(first) != 1:
        raise ValueError(f"{path}:{first_line}: expected a header count, got {' '.join(first)!r}")
    header = _positive_int(first[0], path, first_line, "the header count")
    # people.txt (View 2) starts with the number of folds, and each fold has its own count line.
    multi_fold = len(lines) > 1 and len(lines[1][1]) == 1
    position = 1
    entries: list[PersonEntry] = []
    seen: dict[str, int] = {}
    for fold in range(header if multi_fold else 1):
        count, count_line = header, first_line
        if multi_fold:
            if position >= len(lines):
                raise ValueError(
                    f"{path}:{first_line}: the header announces {header} folds, the file ends after {fold}"
                )
            count_line, fields = lines[position]
            if len(fields) != 1:
                raise ValueError(
                    f"{path}:{count_line}: expected the person count of fold {fold + 1}, got {_quote(' '.join(fields))}"
                )
            count = _positive_int(fields[0], path, count_line, f"fold {fold + 1}'s count")
            position += 1
        people = lines[position : position + count]
        if len(people) < count:
            raise ValueError(
                f"{path}:{count_line}: the count says {count} people, the file has only {len(people)} more lines"
            )
        for line, fields in people:
            if len(fields) != 2:
                raise ValueError(f"{path}:{line}: expected 'Name<TAB>count', got {_quote(' '.join(fields))}")
            name = _person_name(fields[0], path, line)
            num_images = _positive_int(fields[1], path, line, "the image count", _MAX_IMAGE_NUMBER)
            if name in seen:
                raise ValueError(f"{path}:{line}: {name} is listed again (first on line {seen[name]})")
            seen[name] = line
            entries.append(PersonEntry(name, num_images, fold, line))
        position += count
    if position != len(lines):
        line, fields = lines[position]
        raise ValueError(
            f"{path}:{line}: unexpected extra line {_quote(' '.join(fields))} after the {len(entries)} people the "
            "header counts announce"
        )
    return entries


def read_pairs_list(path: str | Path) -> list[PairEntry]:
    """Parse an LFW pairs list (``pairsDevTrain.txt``, ``pairsDevTest.txt`` or the 10-fold ``pairs.txt``).

    Args:
        path: The list file.

    Returns:
        One :class:`PairEntry` per pair line, in file order; ``fold`` is 0 for single-fold lists.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the header does not match the lines, a fold's same/different blocks are out of order, or a line
            is malformed; the message names the file and line.

    Example:
        >>> pairs = read_pairs_list("lfw/pairs.txt")  # doctest: +SKIP
        >>> len(pairs), sum(pair.issame for pair in pairs)  # doctest: +SKIP
        (6000, 3000)
    """
    path = Path(path)
    lines = _read_lines(path)
    header_line, header = lines[0]
    if len(header) == 1:
        num_folds, per_side = 1, _positive_int(header[0], path, header_line, "the pair count")
    elif len(header) == 2:
        num_folds = _positive_int(header[0], path, header_line, "the fold count")
        per_side = _positive_int(header[1], path, header_line, "the pairs-per-side count")
    else:
        raise ValueError(
            f"{path}:{header_line}: expected a header 'pairs' or 'folds<TAB>pairs', got {_quote(' '.join(header))}"
        )
    expected = num_folds * 2 * per_side
    if len(lines) - 1 != expected:
        raise ValueError(
            f"{path}:{header_line}: the header announces {num_folds} fold(s) of {per_side} same + {per_side} "
            f"different pairs = {expected} lines, the file has {len(lines) - 1}"
        )
    entries = []
    for position, (line, fields) in enumerate(lines[1:]):
        fold, within = divmod(position, 2 * per_side)
        issame = within < per_side
        if issame:
            if len(fields) != 3:
                raise ValueError(
                    f"{path}:{line}: expected a same-person line 'Name<TAB>i<TAB>j' (pair {within + 1} of fold "
                    f"{fold + 1}), got {_quote(' '.join(fields))}"
                )
            name1, first, second = fields
            name2 = name1
        else:
            if len(fields) != 4:
                raise ValueError(
                    f"{path}:{line}: expected a different-person line 'NameA<TAB>i<TAB>NameB<TAB>j' (pair "
                    f"{within + 1} of fold {fold + 1}), got {_quote(' '.join(fields))}"
                )
            name1, first, name2, second = fields
        entries.append(
            PairEntry(
                _person_name(name1, path, line),
                _positive_int(first, path, line, "an image number", _MAX_IMAGE_NUMBER),
                _person_name(name2, path, line),
                _positive_int(second, path, line, "an image number", _MAX_IMAGE_NUMBER),
                issame,
                fold,
                line,
            )
        )
    return entries


def _images_folder(root: Path, images_folder: str | Path | None = None) -> Path:
    if images_folder is not None:  # another copy in the same layout, e.g. aligned crops (`data align`)
        folder = Path(images_folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"LFW images folder not found: {folder}")
        return folder
    folder = root / LFW_IMAGES_FOLDER
    if not folder.is_dir():
        raise FileNotFoundError(
            f"LFW images not found: {folder} does not exist. Point root at the folder holding {LFW_IMAGES_FOLDER}/ "
            "and the list files (for FaceDataModule: $LIGHTNING_MARGIN_DATA/lfw), or fetch it with "
            "lightning_margin.data.download_lfw"
        )
    return folder


def _check_split(split: str) -> str:
    if split not in LFW_SPLITS:
        raise ValueError(f"split must be one of {', '.join(repr(s) for s in LFW_SPLITS)}; got {split!r}")
    return split


def _read_listed(path: str, list_file: Path, line: int, transform: Callable[[Any], Any] | None) -> Any:
    """Read, decode and transform one image; errors name the list file and line (formatted only on failure)."""
    try:
        return decode_and_transform(read_file_bytes(path), path, transform)
    except CorruptImageError as error:
        raise CorruptImageError(f"{path} (listed in {list_file}:{line})", error.reason) from None
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path} (listed in {list_file}:{line})") from None


def _report_missing(missing: list[tuple[str, str]]) -> None:
    if missing:
        shown = "; ".join(f"{path} (named on {where})" for path, where in missing[:5])
        more = f"; and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{len(missing)} LFW image(s) named in the list are missing: {shown}{more}")


class LFWPeople(Dataset):
    """LFW identities as a training set: every image of every listed person, labelled by person.

    Items are ``(image, label)``: the decoded RGB ``uint8`` tensor ``[3, 250, 250]`` (or ``transform`` of it) and the
    person's index (people in list order, after the ``min_images_per_identity`` filter).

    Args:
        root: The folder holding ``lfw-deepfunneled/`` and the list files.
        split: ``"dev_train"`` (4,038 people, 9,525 images), ``"dev_test"`` (1,711 people, 3,708 images) or
            ``"10fold"`` (all 5,749 people, 13,233 images, with their View 2 fold).
        transform: Applied to each decoded image (e.g. a ``FaceTransform`` with the LFW centre crop).
        min_images_per_identity: Keep only people with at least this many images (1,184 DevTrain people have 2+):
            a class seen once teaches a margin loss little.
        check_files: Verify at construction that every listed image exists (a few thousand ``stat`` calls), so a
            missing file is reported up front with its list file and line.
        images_folder: Read the images from this folder (same ``Name/Name_NNNN.jpg`` layout) instead of
            ``root/lfw-deepfunneled``: e.g. the aligned copy ``lightning-margin data align`` makes.

    Attributes:
        classes: Person names, indexed by label.
        samples: ``(relative image path, label)`` pairs.
        fold: For ``"10fold"``, the View 2 fold (0-9) of each sample; ``None`` otherwise.

    Raises:
        ValueError: on an unknown split or a malformed list file (file and line named).
        FileNotFoundError: if the images folder, the list file or (with ``check_files``) a listed image is missing.

    Example:
        >>> people = LFWPeople("data/lfw", "dev_train", min_images_per_identity=2)  # doctest: +SKIP
        >>> people.num_classes, len(people)  # doctest: +SKIP
        (1184, 6671)
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "dev_train",
        transform: Callable[[Any], Any] | None = None,
        min_images_per_identity: int = 1,
        check_files: bool = True,
        images_folder: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = _check_split(split)
        if min_images_per_identity < 1:
            raise ValueError(f"min_images_per_identity must be >= 1, got {min_images_per_identity}")
        self.transform = transform
        self.images_folder = _images_folder(self.root, images_folder)
        self._folder = str(self.images_folder)
        self.list_file = self.root / LFW_PEOPLE_FILES[split]
        people = [p for p in read_people_list(self.list_file) if p.num_images >= min_images_per_identity]
        self.classes = [person.name for person in people]
        self.samples: list[tuple[str, int]] = []
        self._lines: list[int] = []
        folds: list[int] = []
        for label, person in enumerate(people):
            for number in range(1, person.num_images + 1):
                self.samples.append((lfw_image_path(person.name, number), label))
                self._lines.append(person.line)
                folds.append(person.fold)
        self.fold: list[int] | None = folds if split == "10fold" else None
        if check_files:
            _report_missing(
                [
                    (str(self.images_folder / relative), f"{self.list_file}:{line}")
                    for (relative, _), line in zip(self.samples, self._lines, strict=True)
                    if not os.path.isfile(self.images_folder / relative)
                ]
            )

    @property
    def num_classes(self) -> int:
        """Number of people (labels are ``0 .. num_classes - 1``)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        relative, label = self.samples[index]
        return _read_listed(
            os.path.join(self._folder, relative), self.list_file, self._lines[index], self.transform
        ), label

    def __repr__(self) -> str:
        classes = len(self.classes)
        return f"{type(self).__name__}({str(self.root)!r}, {self.split!r}, images={len(self)}, classes={classes})"


class LFWPairs(Dataset):
    """LFW verification pairs: ``(image1, image2, issame)`` from a pairs list.

    Args:
        root: The folder holding ``lfw-deepfunneled/`` and the list files.
        split: ``"dev_train"`` (1,100 + 1,100 pairs), ``"dev_test"`` (500 + 500) or ``"10fold"`` (10 folds of
            300 + 300, View 2: the number to report).
        transform: Applied to each decoded image.
        check_files: Verify at construction that every image named in the list exists.
        images_folder: Read the images from this folder instead of ``root/lfw-deepfunneled`` (see
            :class:`LFWPeople`).

    Attributes:
        pairs: The parsed :class:`PairEntry` list.
        issame: One bool per pair.
        fold: For ``"10fold"``, the official fold (0-9) of each pair; ``None`` otherwise.

    Pair order: View 2 (``"10fold"``) keeps the file's order, whose consecutive blocks of 600 are the official
    folds, each mixing 300 same and 300 different pairs. The View 1 files list all same pairs first, so their
    consecutive folds would each hold one kind only and the k-fold accuracy protocol would be biased; View 1 pairs
    are therefore served interleaved (same, different, same, ...; each kind in file order).

    Raises:
        ValueError: on an unknown split or a malformed list file (file and line named).
        FileNotFoundError: if the images folder, the list file or (with ``check_files``) an image is missing.

    Example:
        >>> pairs = LFWPairs("data/lfw", "10fold")  # doctest: +SKIP
        >>> image1, image2, issame = pairs[0]  # doctest: +SKIP
        >>> len(pairs), pairs.fold[600]  # doctest: +SKIP
        (6000, 1)
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "dev_test",
        transform: Callable[[Any], Any] | None = None,
        check_files: bool = True,
        images_folder: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = _check_split(split)
        self.transform = transform
        self.images_folder = _images_folder(self.root, images_folder)
        self._folder = str(self.images_folder)
        self.list_file = self.root / LFW_PAIRS_FILES[split]
        self.pairs = read_pairs_list(self.list_file)
        if split != "10fold":
            self.pairs = _interleave_same_and_different(self.pairs)
        self.issame = [pair.issame for pair in self.pairs]
        self.fold: list[int] | None = [pair.fold for pair in self.pairs] if split == "10fold" else None
        if check_files:
            missing = []
            checked: set[str] = set()
            for pair in self.pairs:
                for name, number in ((pair.name1, pair.number1), (pair.name2, pair.number2)):
                    relative = lfw_image_path(name, number)
                    if relative not in checked:
                        checked.add(relative)
                        if not os.path.isfile(self.images_folder / relative):
                            missing.append((str(self.images_folder / relative), f"{self.list_file}:{pair.line}"))
            _report_missing(missing)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Any, Any, bool]:
        pair = self.pairs[index]
        first, second = (
            _read_listed(
                os.path.join(self._folder, lfw_image_path(name, number)), self.list_file, pair.line, self.transform
            )
            for name, number in ((pair.name1, pair.number1), (pair.name2, pair.number2))
        )
        return first, second, pair.issame

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {self.split!r}, pairs={len(self)})"


def _interleave_same_and_different(pairs: list[PairEntry]) -> list[PairEntry]:
    """Alternate same and different pairs (each kind in its file order), the rest of the longer kind at the end."""
    same = [pair for pair in pairs if pair.issame]
    different = [pair for pair in pairs if not pair.issame]
    mixed = [pair for couple in zip(same, different, strict=False) for pair in couple]
    longer = same if len(same) > len(different) else different
    return mixed + longer[len(mixed) // 2 :]
