"""insightface RecordIO (``train.rec`` + ``train.idx`` + ``property``), read and written without MXNet.

This is the format MS1MV2, MS1MV3 and Glint360K ship in: MXNet's ``MXIndexedRecordIO`` as used by insightface's
``MXFaceDataset``. Its layout, from dmlc-core's ``recordio`` and ``mxnet.recordio``:

* **Framing.** Every record is stored as one or more frames: ``uint32 magic = 0xced7230a``, ``uint32 lrecord``, then
  the frame's bytes, zero-padded to a multiple of 4. ``lrecord``'s upper 3 bits are the continuation flag ``cflag``
  and its lower 29 bits the frame length. A writer that finds the magic number at a 4-byte-aligned position inside a
  record cuts the record there (so a reader can always resynchronise on the magic number): ``cflag`` 0 is a whole
  record, 1 its first part, 2 a middle part, 3 the last part; the reader joins the parts putting the magic number
  back between them.
* **Index.** ``train.idx`` is text, one ``key<TAB>byte offset`` line per record.
* **Record payload** (``IRHeader``): ``struct`` format ``IfQQ`` (``flag: uint32, label: float32, id: uint64,
  id2: uint64``, little-endian, 24 bytes); when ``flag > 0``, ``flag`` further float32 labels follow (the header's own
  ``label`` is then 0); the rest is the encoded image.
* **insightface's identity header.** Record 0 has ``flag > 0`` and labels ``[first_identity_key, end_key)``: the image
  records are keys ``1 .. first_identity_key - 1`` and each key ``first_identity_key + c`` is an image-less record
  whose two labels are the ``[start, end)`` key range of class ``c``'s images. So the number of classes is
  ``end_key - first_identity_key``. An image record's class is its ``label`` (or its first extra label when
  ``flag > 0``).
* ``property`` (optional, beside ``train.rec``): ``num_classes,height,width``.

The functional core is :func:`pack_record` / :func:`unpack_record` (payload) and :func:`frame_record` /
:func:`read_framed_record` (framing); :func:`write_recordio` and :class:`RecordIODataset` build on them.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from lightning_margin.data.transforms import decode_and_transform

__all__ = [
    "RECORDIO_MAGIC",
    "RecordIODataset",
    "RecordIOError",
    "RecordIOHeader",
    "RecordIOSummary",
    "frame_record",
    "pack_record",
    "read_framed_record",
    "read_recordio_index",
    "unpack_record",
    "write_recordio",
]

#: The magic number that starts every RecordIO frame.
RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_FRAME_HEADER = struct.Struct("<II")
# MXNet packs IRHeader with the native "IfQQ" (no padding needed, 24 bytes); every file in the wild comes from
# little-endian machines, so "<" states it rather than depending on the host.
_IR_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1
# float32 represents every integer up to 2**24 exactly; keys and class labels are stored as float32 labels.
_FLOAT32_EXACT_LIMIT = 1 << 24
# The characters of an index as MXNet writes it ("key<TAB>offset<NEWLINE>" lines), for the vectorised parse.
_CANONICAL_INDEX_BYTES = b"0123456789-\t\n"
# One index line in any spacing: two integers of at most 19 digits (int64 is checked after).
_INDEX_LINE = re.compile(rb"\s*(-?[0-9]{1,19})\s+(-?[0-9]{1,19})\s*")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
# Largest first read of a record: the gap to the next indexed offset is the record's size in a sound file, but after
# a truncated or garbled .idx it can span gigabytes; larger records are read frame by frame, at their own lengths.
_MAX_SIZE_HINT = 1 << 20


class RecordIOError(ValueError):
    """A RecordIO file that does not follow the format (bad magic number, truncated record, broken header)."""


class RecordIOHeader(NamedTuple):
    """MXNet's ``IRHeader``: ``flag`` extra labels, ``label`` (a float, or a tuple of floats when ``flag > 0``)."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


class RecordIOSummary(NamedTuple):
    """What :func:`write_recordio` wrote."""

    num_images: int
    num_classes: int


def pack_record(label: float | Iterable[float], payload: bytes = b"", id: int = 0, id2: int = 0) -> bytes:
    """Build a record payload: an ``IRHeader`` (as ``mxnet.recordio.pack``) followed by ``payload``.

    Args:
        label: One float (stored in the header, ``flag = 0``) or several (stored after it, ``flag = count``).
        payload: The encoded image (empty for insightface's header records).
        id: The header's ``id`` field (insightface stores the record key).
        id2: The header's ``id2`` field.

    Returns:
        The record bytes, ready for :func:`frame_record`.

    Example:
        >>> unpack_record(pack_record(3.0, b"jpeg"))
        (RecordIOHeader(flag=0, label=3.0, id=0, id2=0), b'jpeg')
    """
    if isinstance(label, (int, float, np.integer, np.floating)):
        return _IR_HEADER.pack(0, float(label), id, id2) + payload
    labels = np.asarray(list(label), dtype="<f4")
    return _IR_HEADER.pack(labels.size, 0.0, id, id2) + labels.tobytes() + payload


def unpack_record(record: bytes, source: str = "<record>") -> tuple[RecordIOHeader, bytes]:
    """Split a record payload into its ``IRHeader`` and the encoded image (as ``mxnet.recordio.unpack``).

    Args:
        record: The bytes of one record (after :func:`read_framed_record`).
        source: Where the record came from, for error messages.

    Returns:
        ``(header, image_bytes)``; ``header.label`` is a tuple of floats when ``header.flag > 0``.

    Raises:
        RecordIOError: if the record is shorter than its header says.

    Example:
        >>> header, image = unpack_record(pack_record([1.0, 5.0]))
        >>> header.flag, header.label, image
        (2, (1.0, 5.0), b'')
    """
    if len(record) < _IR_HEADER.size:
        raise RecordIOError(
            f"{source}: record of {len(record)} bytes is shorter than its {_IR_HEADER.size}-byte header"
        )
    flag, label, record_id, record_id2 = _IR_HEADER.unpack_from(record)
    start = _IR_HEADER.size
    if flag > 0:
        end = start + 4 * flag
        if len(record) < end:
            raise RecordIOError(
                f"{source}: header announces {flag} extra labels but the record has {len(record)} bytes"
            )
        labels = tuple(float(value) for value in np.frombuffer(record, dtype="<f4", count=flag, offset=start))
        return RecordIOHeader(flag, labels, record_id, record_id2), record[end:]
    return RecordIOHeader(flag, float(label), record_id, record_id2), record[start:]


def _pad4(length: int) -> int:
    return (length + 3) & ~3


def frame_record(record: bytes) -> bytes:
    """Encode one record as RecordIO frames, exactly as dmlc-core's ``RecordIOWriter::WriteRecord`` does.

    The record is cut wherever the magic number appears at a 4-byte-aligned position (that occurrence is dropped and
    implied by the next frame's header); the last frame is zero-padded to a multiple of 4 bytes.

    Args:
        record: The record payload (see :func:`pack_record`); under 2**29 bytes.

    Returns:
        The bytes to append to the ``.rec`` file.

    Example:
        >>> frame_record(b"abc").hex()
        '0a23d7ce0300000061626300'
    """
    if len(record) >= 1 << 29:
        raise RecordIOError(f"a RecordIO record must be shorter than 2**29 bytes, got {len(record)}")
    frames = []
    start = 0
    position = record.find(_MAGIC_BYTES)
    while position != -1:
        if position % 4 == 0:
            flag = 1 if start == 0 else 2
            frames.append(_FRAME_HEADER.pack(RECORDIO_MAGIC, (flag << 29) | (position - start)))
            frames.append(record[start:position])
            start = position + 4
            position = record.find(_MAGIC_BYTES, start)
        else:
            position = record.find(_MAGIC_BYTES, position + 1)
    flag = 3 if start > 0 else 0
    length = len(record) - start
    frames.append(_FRAME_HEADER.pack(RECORDIO_MAGIC, (flag << 29) | length))
    frames.append(record[start:])
    frames.append(b"\0" * (_pad4(length) - length))
    return b"".join(frames)


def read_framed_record(
    read: Callable[[int, int], bytes], offset: int, source: str = "<recordio>", size_hint: int = 0
) -> bytes:
    """Read the record that starts at ``offset``, joining its frames (dmlc-core's ``RecordIOReader::NextRecord``).

    Args:
        read: ``read(offset, size)`` returning up to ``size`` bytes at ``offset`` (fewer only at the end of the file),
            e.g. ``lambda offset, size: os.pread(fd, size, offset)``.
        offset: Byte offset of the record's first frame.
        source: Where the record is (file and key), for error messages.
        size_hint: Expected number of bytes the record occupies, to read it in one call (0: read the frame header
            first).

    Returns:
        The record payload.

    Raises:
        RecordIOError: on a bad magic number, an invalid continuation flag or a truncated record; the message names
            ``source`` and the byte offset.

    Example:
        >>> data = frame_record(b"hello")
        >>> read_framed_record(lambda offset, size: data[offset : offset + size], 0)
        b'hello'
    """
    buffer = read(offset, max(size_hint, _FRAME_HEADER.size))
    position = 0  # within buffer
    parts: list[bytes] = []
    while True:
        if len(buffer) - position < _FRAME_HEADER.size:
            buffer = buffer[position:] + read(offset + len(buffer), _FRAME_HEADER.size)
            offset += position
            position = 0
            if len(buffer) < _FRAME_HEADER.size:
                raise RecordIOError(
                    f"{source}: truncated record: frame header at byte {offset} needs 8 bytes, the file has "
                    f"{len(buffer)} left"
                )
        magic, lrecord = _FRAME_HEADER.unpack_from(buffer, position)
        frame_offset = offset + position
        if magic != RECORDIO_MAGIC:
            raise RecordIOError(
                f"{source}: bad magic number 0x{magic:08x} at byte {frame_offset} (expected 0x{RECORDIO_MAGIC:08x}); "
                "the file is corrupt or the .idx does not belong to this .rec"
            )
        flag, length = lrecord >> 29, lrecord & _LENGTH_MASK
        expected = (0, 1) if not parts else (2, 3)
        if flag not in expected:
            raise RecordIOError(
                f"{source}: invalid continuation flag {flag} at byte {frame_offset} (expected one of {expected})"
            )
        start = position + _FRAME_HEADER.size
        needed = start + _pad4(length) if flag in (0, 3) else start + length
        if len(buffer) < needed:
            buffer += read(offset + len(buffer), needed - len(buffer))
            if len(buffer) < start + length:
                raise RecordIOError(
                    f"{source}: truncated record: frame at byte {frame_offset} announces {length} bytes, the file "
                    f"has {len(buffer) - start}"
                )
        parts.append(buffer[start : start + length])
        if flag in (0, 3):
            return parts[0] if len(parts) == 1 else _MAGIC_BYTES.join(parts)
        position = start + length


def read_recordio_index(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a RecordIO ``.idx`` file (``key<TAB>offset`` lines).

    Args:
        path: The ``.idx`` file.

    Returns:
        ``(keys, offsets)``, two ``int64`` arrays in file order.

    Raises:
        RecordIOError: if a non-blank line is not two integers that fit ``int64`` (the message names the line).

    Example:
        >>> keys, offsets = read_recordio_index("train.idx")  # doctest: +SKIP
    """
    content = Path(path).read_bytes()
    parsed = _parse_canonical_index(content)
    return parsed if parsed is not None else _parse_index_lines(content, path)


def _parse_canonical_index(content: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """Vectorised parse of an index exactly as MXNet writes it; ``None`` for anything else (spaces, ``\\r``, blank
    lines, a malformed or out-of-range number), which :func:`_parse_index_lines` then reads line by line."""
    if not content:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if not content.endswith(b"\n") or content.translate(None, _CANONICAL_INDEX_BYTES):
        return None
    codes = np.frombuffer(content, dtype=np.uint8)
    separators = np.flatnonzero((codes == ord("\t")) | (codes == ord("\n")))
    kinds = codes[separators]
    # Tab, newline, tab, newline, ... with a non-empty field before each: every line holds exactly two fields. The
    # field total alone is not enough: a line of 3 fields and one of 1 would pair keys with the wrong offsets.
    if (
        kinds.size % 2
        or (kinds[0::2] != ord("\t")).any()
        or (kinds[1::2] != ord("\n")).any()
        or separators[0] == 0
        or (np.diff(separators) == 1).any()
    ):
        return None
    try:
        values = np.array(content.split(), dtype=np.int64)
    except (ValueError, OverflowError):  # "5-3", "-", or a number past int64
        return None
    table = values.reshape(-1, 2)
    return table[:, 0].copy(), table[:, 1].copy()


def _parse_index_lines(content: bytes, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    keys, offsets = [], []
    for number, line in enumerate(content.split(b"\n"), start=1):
        if not line.strip():
            continue
        match = _INDEX_LINE.fullmatch(line)
        values = (int(match[1]), int(match[2])) if match else ()
        if not values or not all(_INT64_MIN <= value <= _INT64_MAX for value in values):
            raise RecordIOError(f"{path}:{number}: expected 'key<TAB>offset' (two 64-bit integers), got {line[:80]!r}")
        keys.append(values[0])
        offsets.append(values[1])
    return np.array(keys, dtype=np.int64), np.array(offsets, dtype=np.int64)


def _check_label(label: Any, position: int) -> int:
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise ValueError(f"sample {position}: label must be an int, got {label!r} ({type(label).__name__})")
    if not 0 <= int(label) < _FLOAT32_EXACT_LIMIT:
        raise ValueError(f"sample {position}: label must be in [0, 2**24) (stored as float32), got {label}")
    return int(label)


def write_recordio(
    path: str | Path, samples: Iterable[tuple[bytes, int]], write_property: bool = True
) -> RecordIOSummary:
    """Write ``(encoded_image, label)`` samples as an insightface RecordIO set: ``.rec``, ``.idx`` and ``property``.

    The layout is the one insightface's ``MXFaceDataset`` reads (see the module docstring): record 0 holds the
    identity range header, keys ``1..N`` the images in the given order, keys ``N+1..N+C`` one identity record per
    class ``0..C-1`` (``C = max label + 1``; a class with no images gets an empty range). Images are stored as given,
    not re-encoded. Files are written under temporary names and renamed at the end, so an error leaves no
    half-written set behind.

    Args:
        path: The ``.rec`` file to write; the ``.idx`` goes beside it with the same stem.
        samples: ``(encoded_image_bytes, label)`` pairs, grouped by label (all images of a class consecutive, as
            insightface's per-class key ranges require), labels ints in ``[0, 2**24)``.
        write_property: Also write ``property`` (``num_classes,height,width``, the first image's size) in the same
            folder, as insightface's data folders have.

    Returns:
        The number of images and classes written.

    Raises:
        ValueError: on a label that is not a non-negative int, a class whose images are not consecutive, or no
            samples.

    Example:
        >>> write_recordio("faces/train.rec", [(jpeg_a, 0), (jpeg_b, 0), (jpeg_c, 1)])  # doctest: +SKIP
        RecordIOSummary(num_images=3, num_classes=2)
    """
    rec_path = Path(path)
    idx_path = rec_path.with_suffix(".idx")
    rec_tmp = rec_path.with_name(rec_path.name + ".tmp")
    idx_tmp = idx_path.with_name(idx_path.name + ".tmp")
    ranges: dict[int, list[int]] = {}
    previous_label: int | None = None
    first_image: bytes | None = None
    key = 0
    try:
        with open(rec_tmp, "wb") as rec_file, open(idx_tmp, "w", encoding="ascii") as idx_file:

            def write(record_key: int, record: bytes) -> None:
                idx_file.write(f"{record_key}\t{rec_file.tell()}\n")
                rec_file.write(frame_record(record))

            # Record 0's labels are only known at the end; its framed size does not depend on their values (small
            # positive floats never contain the magic number), so write a placeholder and patch it in place.
            placeholder = frame_record(pack_record([0.0, 0.0], b"", 0, 0))
            write(0, pack_record([0.0, 0.0], b"", 0, 0))
            for position, sample in enumerate(samples):
                try:
                    image, label = sample
                except (TypeError, ValueError):
                    raise ValueError(
                        f"sample {position}: expected (encoded_image_bytes, label), got {sample!r:.80}"
                    ) from None
                if not isinstance(image, (bytes, bytearray, memoryview)):
                    raise ValueError(f"sample {position}: image must be bytes, got {type(image).__name__}")
                label = _check_label(label, position)
                key += 1
                if label != previous_label:
                    if label in ranges:
                        raise ValueError(
                            f"sample {position}: label {label} appears again after other labels; write_recordio "
                            "needs the samples grouped by label (insightface stores each class as one key range)"
                        )
                    ranges[label] = [key, key]
                    previous_label = label
                ranges[label][1] = key + 1
                if first_image is None:
                    first_image = bytes(image)
                write(key, pack_record(float(label), bytes(image), key, 0))
            num_images = key
            if num_images == 0:
                raise ValueError("write_recordio got no samples")
            num_classes = max(ranges) + 1
            first_identity = num_images + 1
            if first_identity + num_classes >= _FLOAT32_EXACT_LIMIT:
                raise ValueError(
                    f"{num_images} images and {num_classes} classes exceed what the header's float32 labels hold "
                    "exactly (2**24 keys)"
                )
            for label in range(num_classes):
                start, end = ranges.get(label, [first_identity, first_identity])
                write(first_identity + label, pack_record([float(start), float(end)], b"", first_identity + label, 0))
            header = frame_record(pack_record([float(first_identity), float(first_identity + num_classes)], b"", 0, 0))
            if len(header) != len(placeholder):  # cannot happen for valid counts; guards the in-place patch
                raise RecordIOError("internal error: record 0 changed size")
            rec_file.seek(0)
            rec_file.write(header)
        os.replace(rec_tmp, rec_path)
        os.replace(idx_tmp, idx_path)
    finally:
        for leftover in (rec_tmp, idx_tmp):
            leftover.unlink(missing_ok=True)
    if write_property and first_image is not None:
        try:
            with Image.open(io.BytesIO(first_image)) as image:
                width, height = image.size
        except (OSError, SyntaxError, ValueError):
            pass  # property is informative only; the reader does not need it
        else:
            (rec_path.parent / "property").write_text(f"{num_classes},{height},{width}\n", encoding="ascii")
    return RecordIOSummary(num_images, num_classes)


class RecordIODataset(Dataset):
    """insightface RecordIO face set (MS1MV2/MS1MV3/Glint360K layout), read with ``os.pread``: no MXNet.

    Items are ``(image, label)``: ``image`` the decoded RGB ``uint8`` tensor ``[3, H, W]`` (or ``transform`` of it),
    ``label`` an ``int`` in ``[0, num_classes)``. Items follow insightface's ``MXFaceDataset``: with the identity header
    (record 0 ``flag > 0``) the images are keys ``1 .. first_identity_key - 1``; without it every indexed record is an
    image. The file is opened lazily in each process, so the dataset pickles cheaply into DataLoader workers.

    ``num_classes`` comes from the identity header, else from ``property``, else from a scan of every label.

    Args:
        path: The ``.rec`` file; its ``.idx`` must be beside it (same stem).
        transform: Applied to each decoded image (e.g. :class:`~lightning_margin.data.transforms.FaceTransform`).

    Raises:
        FileNotFoundError: if the ``.rec`` or ``.idx`` is missing.
        RecordIOError: if record 0 or the index is malformed (later, per item, on corrupt records).

    Example:
        >>> dataset = RecordIODataset("faces_emore/train.rec")  # doctest: +SKIP
        >>> image, label = dataset[0]  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, transform: Callable[[Any], Any] | None = None) -> None:
        self.path = Path(path)
        self.index_path = self.path.with_suffix(".idx")
        self.transform = transform
        for required in (self.path, self.index_path):
            if not required.is_file():
                raise FileNotFoundError(f"RecordIO file not found: {required}")
        self._file_size = self.path.stat().st_size
        self._fd: int | None = None
        self._fd_pid: int | None = None
        keys, offsets = read_recordio_index(self.index_path)
        if keys.size == 0:
            raise RecordIOError(f"{self.index_path}: the index is empty")
        bad = np.flatnonzero((offsets < 0) | (offsets >= self._file_size))
        if bad.size:
            # Refused up front even with skip_corrupt: a .rec shorter than its index is a cut-off download (or the
            # wrong pair of files), and skipping would silently drop every record past the cut.
            raise RecordIOError(
                f"{self.index_path}: key {keys[bad[0]]} points at byte {offsets[bad[0]]}, outside the "
                f"{self._file_size}-byte {self.path.name} (a truncated .rec, or an .idx written for another file)"
            )
        # Expected size of each record: the gap to the next record in file order, so one pread reads it whole.
        order = np.argsort(offsets, kind="stable")
        sizes = np.empty_like(offsets)
        sizes[order[:-1]] = np.diff(offsets[order])
        sizes[order[-1]] = self._file_size - offsets[order[-1]]
        self._sizes = np.minimum(sizes, _MAX_SIZE_HINT)
        if np.array_equal(keys, np.arange(keys.size)):
            self._offset_of = offsets  # dense keys 0..n-1 (what insightface writes): index directly
            self._position: dict[int, int] | None = None
        else:
            self._offset_of = offsets
            self._position = {int(key): position for position, key in enumerate(keys.tolist())}
        self.identity_range: tuple[int, int] | None = None
        first = self._position_of(0) if self._has_key(0) else None
        if first is not None:
            header, _ = unpack_record(self._read_position(first, "key 0"), f"{self.path} key 0")
            if header.flag > 0 and isinstance(header.label, tuple) and len(header.label) >= 2:
                start, end = header.label[:2]
                if not all(math.isfinite(value) and value.is_integer() for value in (start, end)):
                    raise RecordIOError(f"{self.path} key 0: identity header [{start}, {end}) is not a range of keys")
                self.identity_range = (int(start), int(end))
        if self.identity_range is not None:
            first_identity, end_identity = self.identity_range
            if not (1 <= first_identity <= keys.size and first_identity < end_identity):
                raise RecordIOError(
                    f"{self.path} key 0: identity header [{first_identity}, {end_identity}) does not fit an index "
                    f"of {keys.size} records"
                )
            self._image_keys = np.arange(1, first_identity, dtype=np.int64)
            # The header's key ranges must exist (checked at their ends): a corrupt header must not announce images,
            # or millions of classes for the model's head, that the index does not hold.
            named = {1, first_identity - 1, end_identity - 1}
            missing = sorted(key for key in named if not self._has_key(key))
            if missing:
                raise RecordIOError(f"{self.index_path}: key {missing[0]} named by the identity header is not indexed")
            self.num_classes = end_identity - first_identity
        else:
            self._image_keys = keys
            self.num_classes = self._num_classes_without_header()

    # -- low-level access -------------------------------------------------------------------------------------------
    def _has_key(self, key: int) -> bool:
        if self._position is None:
            return 0 <= key < self._offset_of.size
        return key in self._position

    def _position_of(self, key: int) -> int:
        if self._position is None:
            if not 0 <= key < self._offset_of.size:
                raise RecordIOError(f"{self.index_path}: key {key} is not in the index")
            return key
        try:
            return self._position[key]
        except KeyError:
            raise RecordIOError(f"{self.index_path}: key {key} is not in the index") from None

    def _read(self, offset: int, size: int) -> bytes:
        if self._fd is None or self._fd_pid != os.getpid():
            # One descriptor per process: DataLoader workers must not share a file position (pread has none anyway).
            self._fd = os.open(self.path, os.O_RDONLY)
            self._fd_pid = os.getpid()
        # Never ask for more than the file holds: a corrupt length field must give a "truncated" error, not a
        # 512 MiB allocation.
        return os.pread(self._fd, max(0, min(size, self._file_size - offset)), offset)

    def _read_position(self, position: int, what: str) -> bytes:
        return read_framed_record(
            self._read,
            int(self._offset_of[position]),
            f"{self.path} {what}",
            size_hint=int(self._sizes[position]),
        )

    def read_record(self, key: int) -> tuple[RecordIOHeader, bytes]:
        """The header and encoded image bytes of the record with ``key`` (no decoding).

        Example:
            >>> header, jpeg = RecordIODataset("train.rec").read_record(1)  # doctest: +SKIP
        """
        source = f"{self.path} key {key}"
        return unpack_record(self._read_position(self._position_of(key), f"key {key}"), source)

    def _label_of(self, header: RecordIOHeader, key: int) -> int:
        value = header.label[0] if isinstance(header.label, tuple) else header.label
        if not float(value).is_integer() or not 0 <= value < max(self.num_classes, 1):
            raise RecordIOError(f"{self.path} key {key}: label {value} is not a class index in [0, {self.num_classes})")
        return int(value)

    def _num_classes_without_header(self) -> int:
        declared = self._num_classes_from_property()
        if declared is not None:
            return declared
        # No header, no usable property: scan the labels (reading whole records is simpler than parsing only their
        # headers, and this path is rare).
        largest = -1
        for key in self._image_keys.tolist():
            header, _ = self.read_record(int(key))
            value = header.label[0] if isinstance(header.label, tuple) else header.label
            if not float(value).is_integer() or not 0 <= value < _FLOAT32_EXACT_LIMIT:
                raise RecordIOError(f"{self.path} key {key}: label {value} is not a class index in [0, 2**24)")
            largest = max(largest, int(value))
        return largest + 1

    def _num_classes_from_property(self) -> int | None:
        """``property``'s first field (``num_classes,height,width``) when it is a usable count, else ``None``.

        The file is informative only, so a garbled one (not ASCII digits, 0, past the float32 label range) is ignored
        rather than trusted; only its first bytes are read.
        """
        try:
            with open(self.path.parent / "property", "rb") as file:
                first_field = file.read(64).strip().split(b",")[0]
        except OSError:  # absent (or not a file): scan instead
            return None
        if first_field.isdigit() and len(first_field) <= 9 and 1 <= int(first_field) <= _FLOAT32_EXACT_LIMIT:
            return int(first_field)
        return None

    # -- Dataset API --------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._image_keys.size)

    def read_encoded(self, index: int) -> tuple[bytes, int]:
        """The ``index``-th sample's encoded image bytes and label, without decoding.

        Example:
            >>> jpeg, label = RecordIODataset("train.rec").read_encoded(0)  # doctest: +SKIP
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        key = int(self._image_keys[index])
        header, image = self.read_record(key)
        return image, self._label_of(header, key)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image_bytes, label = self.read_encoded(index)
        key = int(self._image_keys[index])
        return decode_and_transform(image_bytes, f"{self.path} key {key}", self.transform), label

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fd"] = None  # descriptors do not cross processes; reopened lazily
        state["_fd_pid"] = None
        return state

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._fd_pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, images={len(self)}, num_classes={self.num_classes})"
