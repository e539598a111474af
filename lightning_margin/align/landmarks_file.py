"""``landmarks.tsv``: five landmarks per image, the file ``data align`` writes and ``--landmarks`` reads.

One line per image, fields separated by tabs::

    PATH  X1 Y1 X2 Y2 X3 Y3 X4 Y4 X5 Y5  [SCORE  [BOX_X1 BOX_Y1 BOX_X2 BOX_Y2]]

``PATH`` is the image's path relative to the input folder, with ``/`` separators; the ten coordinates are the five
ArcFace landmarks (left eye, right eye, nose tip, left and right mouth corners) in that image's pixel coordinates;
``SCORE`` is the detector's confidence and the box the detection's ``(x1, y1, x2, y2)`` (both written when known).
Blank lines and lines starting with ``#`` are skipped. A line holding no tab is split on runs of spaces, so
insightface's landmark lists (``name x1 y1 ... x5 y5 [score]``, e.g. IJB's ``*_name_5pts_score.txt``) read as they
are. Coordinates are written with :data:`DECIMALS` decimals; :func:`rounded` rounds landmarks the same way, so a crop
made from rounded landmarks can be made again, identically, from its line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightning_margin._atomic import atomic_path
from lightning_margin.align.detect import DetectedFace
from lightning_margin.align.transform import check_landmarks
from lightning_margin.data.text_lines import read_text_lines

__all__ = [
    "DECIMALS",
    "LANDMARKS_FILE",
    "LandmarksRecord",
    "format_landmarks_line",
    "parse_landmarks_line",
    "read_landmarks_file",
    "rounded",
    "write_landmarks_file",
]

#: The name ``data align`` gives the file in its output folder.
LANDMARKS_FILE = "landmarks.tsv"
#: Decimals of the coordinates written (1/1000 pixel).
DECIMALS = 3
_FIELD_COUNTS = (11, 12, 16)


@dataclass(frozen=True, eq=False)
class LandmarksRecord:
    """One line: an image's relative ``path`` and its :class:`~lightning_margin.align.detect.DetectedFace`."""

    path: str
    face: DetectedFace


def rounded(face: DetectedFace) -> DetectedFace:
    """``face`` with its landmarks, score and box rounded as the file keeps them (the backend's points stay).

    Example:
        >>> rounded(DetectedFace.from_landmarks(np.full((5, 2), 1 / 3) + np.eye(5, 2))).landmarks[0].tolist()
        [1.333, 0.333]
    """
    box = None if face.box is None else tuple(round(value, DECIMALS) for value in face.box)
    score = None if face.score is None else round(face.score, DECIMALS + 3)
    return DetectedFace(box, score, np.round(face.landmarks, DECIMALS), face.points)


def _number(value: float, decimals: int = DECIMALS) -> str:
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def format_landmarks_line(record: LandmarksRecord) -> str:
    """The line (no newline) for one image.

    Example:
        >>> face = DetectedFace((1, 2, 30, 40), 0.875, [[10, 11], [20, 11], [15, 15], [11, 20], [19, 20.5]])
        >>> format_landmarks_line(LandmarksRecord("Ann/Ann_0001.jpg", face)).replace("\\t", " ")
        'Ann/Ann_0001.jpg 10 11 20 11 15 15 11 20 19 20.5 0.875 1 2 30 40'
    """
    path = record.path
    if not path or "\t" in path or "\n" in path or "\r" in path or path.startswith("#") or path != path.strip():
        raise ValueError(f"a landmarks.tsv path cannot start with '#', hold tabs or line breaks or be padded: {path!r}")
    face = record.face
    fields = [path, *(_number(value) for value in face.landmarks.ravel())]
    if face.score is not None or face.box is not None:
        fields.append("nan" if face.score is None else _number(face.score, DECIMALS + 3))
    if face.box is not None:
        fields.extend(_number(value) for value in face.box)
    return "\t".join(fields)


def parse_landmarks_line(text: str, where: str) -> LandmarksRecord | None:
    """The record of one line; ``None`` for a blank or ``#`` line.

    Args:
        text: The line.
        where: ``file:line``, for errors.

    Raises:
        ValueError: naming ``where``, for a wrong number of fields, a field that is not a number or landmarks that
            are not finite.

    Example:
        >>> parse_landmarks_line("1.jpg 46.1 62.0 87.5 60.3 68.5 83.0 52.9 103.9 84.1 102.4 0.99", "ijb.txt:1").path
        '1.jpg'
    """
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    fields = text.rstrip("\r\n").split("\t") if "\t" in text else stripped.split()
    if len(fields) not in _FIELD_COUNTS:
        raise ValueError(
            f"{where}: expected PATH, 10 coordinates, then optionally SCORE and a 4-number box (11, 12 or 16 fields), "
            f"got {len(fields)} fields: {stripped[:120]!r}"
        )
    path = fields[0].strip()
    try:
        numbers = [float(field) for field in fields[1:]]
    except ValueError:
        raise ValueError(f"{where}: the fields after the path must be numbers, got {fields[1:]!r}") from None
    try:
        landmarks = check_landmarks(np.array(numbers[:10]).reshape(5, 2), 5, "the landmarks")
        score = numbers[10] if len(numbers) > 10 and not math.isnan(numbers[10]) else None
        box = tuple(numbers[11:15]) if len(numbers) == 15 else None
        return LandmarksRecord(path, DetectedFace(box, score, landmarks))  # type: ignore[arg-type]
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def read_landmarks_file(path: str | os.PathLike[str], *, partial_last_line: bool = False) -> dict[str, LandmarksRecord]:
    """Every record of a landmarks file, by path.

    Args:
        path: The file (``landmarks.tsv``, or an insightface list).
        partial_last_line: Ignore a last line that does not end in a newline (a journal cut off mid-write) instead
            of parsing it.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file and line, for a malformed line or a path listed twice.

    Example:
        >>> records = read_landmarks_file("aligned/landmarks.tsv")  # doctest: +SKIP
        >>> records["Ann/Ann_0001.jpg"].face.landmarks.shape  # doctest: +SKIP
        (5, 2)
    """
    path = Path(path)
    lines = read_text_lines(path, what="landmarks file")
    if partial_last_line and lines and lines[-1][1]:
        lines = lines[:-1]
    records: dict[str, LandmarksRecord] = {}
    first_line: dict[str, int] = {}
    for number, text in lines:
        record = parse_landmarks_line(text, f"{path}:{number}")
        if record is None:
            continue
        if record.path in records:
            first = first_line[record.path]
            raise ValueError(f"{path}:{number}: {record.path} is listed again (first on line {first})")
        records[record.path] = record
        first_line[record.path] = number
    return records


def write_landmarks_file(path: str | os.PathLike[str], records: Iterable[LandmarksRecord], header: str = "") -> None:
    """Write records (sorted by path) atomically: a reader sees the old file or the whole new one.

    Args:
        path: The file.
        records: The records.
        header: Comment lines written first (each prefixed with ``# ``).

    Example:
        >>> write_landmarks_file("aligned/landmarks.tsv", records.values())  # doctest: +SKIP
    """
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [format_landmarks_line(record) for record in sorted(records, key=lambda record: record.path)]
    with atomic_path(path) as temporary:
        temporary.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
