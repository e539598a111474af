"""Property-based tests (hypothesis) for the file parsers: broken and hostile RecordIO, verification .bin, LFW lists.

Issue 8, "Hostile and broken files". Valid files are built with the project's writers (LFW lists by this file), then
damaged at random: truncation, bit flips, overwritten or inserted bytes, out-of-range lengths, labels and offsets,
wrong field counts, non-UTF-8 bytes. Every reader must then return data that satisfies the format's invariants, or
raise a documented error (``RecordIOError``, ``CorruptImageError``, ``ValueError``, ``UnsafePickleError``) whose
message names the file and the record, byte or line; never another exception, a hang or a giant allocation. Records
the damage did not touch must still read back exactly. Round-trip properties check writers against readers and
against decoders written here from the format descriptions.

Runs are reproducible (``derandomize=True``, no example database). The ``@example`` rows are the bugs found while
writing these properties (by the search, or by reading the parsers and then confirming the property fails on them),
kept as regressions.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import re
import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from lightning_margin.data import (
    CorruptImageError,
    FaceDataModule,
    LFWPairs,
    LFWPeople,
    PairEntry,
    PersonEntry,
    RecordIODataset,
    RecordIOError,
    SkipCorruptDataset,
    UnsafePickleError,
    VerificationBinDataset,
    frame_record,
    pack_record,
    read_bin,
    read_framed_record,
    read_pairs_list,
    read_people_list,
    unpack_record,
    write_bin,
    write_recordio,
)
from lightning_margin.data.corrupt import CorruptImagesSkippedWarning


def profile(max_examples: int) -> settings:
    """Bounded, reproducible runs: a fixed derandomized search, no example database written to the tree."""
    return settings(
        max_examples=max_examples,
        deadline=5000,  # ms per example: generous for a loaded 2-core CI machine, still flags a near-hang
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def solid_jpeg(value: int, size: int = 8) -> bytes:
    """A small JPEG whose colour encodes ``value`` (``value // 40`` survives JPEG rounding)."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value, value, value)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def reference_pixels(data: bytes) -> torch.Tensor:
    """Independent decode: Pillow straight to an RGB ``[3, H, W]`` tensor."""
    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)


def error_chain(error: BaseException) -> Iterator[BaseException]:
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


# =====================================================================================================================
# RecordIO
# =====================================================================================================================
MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
IMAGE_LABELS = (0, 0, 1, 2, 2)
IMAGES = tuple(solid_jpeg(40 * label + 15 + 5 * position) for position, label in enumerate(IMAGE_LABELS))


def _build_recordio() -> tuple[bytes, bytes]:
    with TemporaryDirectory() as folder:
        write_recordio(Path(folder) / "train.rec", zip(IMAGES, IMAGE_LABELS, strict=True))
        return (Path(folder) / "train.rec").read_bytes(), (Path(folder) / "train.idx").read_bytes()


REC, IDX = _build_recordio()
# Byte ranges of the records, from the index text (keys 0..8: header, 5 images, 3 identity records).
STARTS = [int(line.split(b"\t")[1]) for line in IDX.splitlines()]
ENDS = [*STARTS[1:], len(REC)]
NUM_RECORDS = len(STARTS)
NUM_IMAGES, NUM_CLASSES = len(IMAGES), max(IMAGE_LABELS) + 1
# The same images without insightface's identity header: every record is an image (flag 0, label in the header).
HEADERLESS_RECORDS = [
    pack_record(float(label), image, key) for key, (image, label) in enumerate(zip(IMAGES, IMAGE_LABELS, strict=True))
]

positions = st.integers(0, len(REC) - 1)
# Most random positions land in JPEG payloads; these land in a record's frame and IRHeader (the first 40 bytes).
structural_positions = st.sampled_from(STARTS).flatmap(lambda start: st.integers(start, min(start + 39, len(REC) - 1)))
# Record 0 (the identity header) half of the time: it is the record whose fields steer everything else.
keys = st.one_of(st.just(0), st.integers(0, NUM_RECORDS - 1))
recordio_damage = st.one_of(
    st.tuples(st.just("flip"), st.one_of(positions, structural_positions), st.integers(0, 7)),
    st.tuples(st.just("write"), st.one_of(positions, structural_positions), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), positions),
    # A header float (slot 0: IRHeader.label, 1-2: extra labels after it): nan, inf, huge, negative, fractional.
    st.tuples(
        st.just("label"),
        keys,
        st.integers(0, 2),
        st.one_of(st.floats(width=32), st.sampled_from([math.nan, math.inf, -math.inf, 3.5, -1.0, 2.0**24, 3e38])),
    ),
    st.tuples(st.just("flag"), keys, st.integers(0, 2**32 - 1)),
    st.tuples(st.just("lrecord"), keys, st.integers(0, 2**32 - 1)),
    st.tuples(
        st.just("idx_offset"),
        keys,
        st.one_of(st.integers(-8, 2 * len(REC)), st.integers(2**31, 2**80), st.integers(-(2**80), -(2**62))),
    ),
    st.tuples(st.just("idx_write"), st.integers(0, len(IDX) - 1), st.binary(min_size=1, max_size=6)),
    st.tuples(st.just("idx_truncate"), st.integers(0, len(IDX) - 1)),
)


def damage_recordio(damage: list[tuple[Any, ...]]) -> tuple[bytes, bytes, set[int], bool]:
    """Apply the damage; returns (rec, idx, keys whose bytes or index entry changed, whether that set is exact)."""
    rec = bytearray(REC)
    idx_lines = IDX.splitlines(keepends=True)
    touched: set[int] = set()
    exact = True

    def hit(start: int, end: int) -> None:
        touched.update(key for key in range(NUM_RECORDS) if start < ENDS[key] and STARTS[key] < end)

    for kind, *args in sorted(damage, key=lambda item: item[0] != "idx_offset"):  # index edits first, then bytes
        if kind == "flip":
            position, bit = args
            if position < len(rec):
                rec[position] ^= 1 << bit
                hit(position, position + 1)
        elif kind == "write":
            position, data = args
            rec[position : position + len(data)] = data[: max(0, len(rec) - position)]
            hit(position, position + len(data))
        elif kind == "truncate":
            hit(args[0], len(REC))
            del rec[args[0] :]
        elif kind in ("label", "flag", "lrecord"):
            key, *value = args
            if kind == "label":
                where, packed = STARTS[key] + (12 if value[0] == 0 else 28 + 4 * value[0]), struct.pack("<f", value[1])
            else:
                where, packed = STARTS[key] + (8 if kind == "flag" else 4), struct.pack("<I", value[0])
            if where + 4 <= len(rec):
                rec[where : where + 4] = packed
                touched.add(key)
        elif kind == "idx_offset":
            key, offset = args
            idx_lines[key] = f"{key}\t{offset}\n".encode()
            touched.add(key)
        else:
            exact = False  # garbled or truncated index text: which keys it changes is not tracked
            idx = bytearray(b"".join(idx_lines))
            if kind == "idx_write":
                idx[args[0] : args[0] + len(args[1])] = args[1]
            else:
                del idx[args[0] :]
            idx_lines = bytes(idx).splitlines(keepends=True)
    return bytes(rec), b"".join(idx_lines), touched, exact


# The first line of a RecordIOError names the file and where: a key, a byte offset or an index line.
RECORDIO_WHERE = re.compile(r"key -?\d+|byte \d+|\.idx:\d+:|\.idx: the index is empty")


@profile(max_examples=400)
@given(damage=st.lists(recordio_damage, min_size=1, max_size=3))
@example(damage=[("idx_offset", 3, 2**70)]).via("found: OverflowError from numpy on an offset past int64")
@example(damage=[("label", 0, 1, float("nan"))]).via("found: int(nan) on a NaN identity-header label")
@example(damage=[("label", 0, 2, float("inf"))]).via("found: OverflowError on an infinite identity-header label")
@example(damage=[("label", 0, 2, 3e38)]).via("found: a corrupt identity header announced 3e38 classes")
@example(damage=[("label", 0, 2, 6.0)]).via("found: an identity header [6, 6) gave a set of images with 0 classes")
@example(damage=[("flag", 0, 0), ("label", 2, 0, 2.0**30)]).via("found: a label scan announced 2**30 + 1 classes")
@example(damage=[("idx_write", 11, b"--")]).via("found: '--4' passed the line check: 'malformed index', no line")
@pytest.mark.timeout(120)
def test_damaged_recordio_reads_exactly_or_fails_naming_file_and_record(damage: list[tuple[Any, ...]]) -> None:
    rec, idx, touched, exact = damage_recordio(damage)
    with TemporaryDirectory() as folder:
        rec_path, idx_path = Path(folder) / "train.rec", Path(folder) / "train.idx"
        rec_path.write_bytes(rec)
        idx_path.write_bytes(idx)
        try:
            dataset = RecordIODataset(rec_path)
        except RecordIOError as error:  # construction reads the index and record 0 only
            assert str(error).startswith((str(rec_path), str(idx_path))), error
            assert RECORDIO_WHERE.search(str(error)), error
            return
        # A corrupt label must not announce a giant classification head: the format's labels are float32 integers
        # below 2**24, and a header's classes are the identity records the index holds.
        assert 0 < dataset.num_classes <= 2**24
        if dataset.identity_range is not None and exact:
            assert dataset.num_classes <= NUM_RECORDS
        skipping = SkipCorruptDataset(dataset)
        failures = 0
        for index in range(len(dataset)):
            try:
                image, label = dataset[index]
            except (RecordIOError, CorruptImageError) as error:
                failures += 1
                where = rf"({re.escape(str(rec_path))} |{re.escape(str(idx_path))}: )key -?\d+"
                assert re.search(where, str(error)), error
                assert skipping[index] is None  # the same failure, skipped under skip_corrupt
            else:
                assert isinstance(label, int) and 0 <= label < dataset.num_classes
                assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
                assert skipping[index][1] == label
        assert skipping.counter.total == failures
        if exact and 0 not in touched:  # header intact: the untouched images read back exactly
            assert (len(dataset), dataset.num_classes) == (NUM_IMAGES, NUM_CLASSES)
            for key in range(1, NUM_IMAGES + 1):
                if key not in touched:
                    assert dataset.read_encoded(key - 1) == (IMAGES[key - 1], IMAGE_LABELS[key - 1])
                    assert torch.equal(dataset[key - 1][0], reference_pixels(IMAGES[key - 1]))


def test_index_lines_are_checked_one_by_one(tmp_path: Path) -> None:
    # Garbled so that one line has 3 fields and a later one 1: the field total stays even, and pairing the fields
    # across lines would invent keys and offsets (key 1368 at byte 402032) instead of naming the broken line.
    idx = bytearray(IDX)
    idx[12:13], idx[23:24] = b" ", b"0"  # "2\t704" -> "2\t7 4", "4\t2032" -> "402032"
    (tmp_path / "train.rec").write_bytes(REC)
    (tmp_path / "train.idx").write_bytes(bytes(idx))
    with pytest.raises(RecordIOError, match=r"train\.idx:3: expected 'key<TAB>offset'"):
        RecordIODataset(tmp_path / "train.rec")


def test_last_indexed_record_is_not_read_with_the_rest_of_the_file(tmp_path: Path) -> None:
    # A record is read in one call sized by the gap to the next indexed offset. When the index stops early (truncated
    # .idx) or the .rec has trailing data, the last record's gap is the rest of the file: 64 MiB here (sparse, so
    # cheap to create), tens of GB for a truncated Glint360K index.
    offsets, rec = [], b""
    for record in HEADERLESS_RECORDS:
        offsets.append(len(rec))
        rec += frame_record(record)
    path = tmp_path / "train.rec"
    with open(path, "wb") as file:
        file.write(rec)
        file.truncate(len(rec) + (64 << 20))
    (tmp_path / "train.idx").write_text("".join(f"{key}\t{offset}\n" for key, offset in enumerate(offsets)))
    tracemalloc.start()
    try:
        dataset = RecordIODataset(path)  # no header, no property: scans every label
        last = dataset.read_encoded(NUM_IMAGES - 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert last == (IMAGES[-1], IMAGE_LABELS[-1]) and dataset.num_classes == NUM_CLASSES
    assert peak < 8 << 20, f"{peak} bytes allocated to read {len(rec)} bytes of records"


def test_skip_corrupt_datamodule_drops_and_counts_exactly_the_damaged_records(tmp_path: Path) -> None:
    labels = [0, 0, 1, 1, 2, 2, 3, 3]
    images = [solid_jpeg(40 * label + 20) for label in labels]
    path = tmp_path / "train.rec"
    write_recordio(path, zip(images, labels, strict=True))
    starts = [int(line.split("\t")[1]) for line in path.with_suffix(".idx").read_text().splitlines()]
    rec = bytearray(path.read_bytes())
    rec[starts[2] : starts[2] + 4] = b"\xde\xad\xbe\xef"  # key 2: bad magic number
    rec[starts[4] + 4 : starts[4] + 8] = struct.pack("<I", (1 << 29) - 1)  # key 4: length past the end of file
    rec[starts[5] + 12 : starts[5] + 16] = struct.pack("<f", 99.0)  # key 5: label outside [0, 4)
    rec[starts[7] + 40 : starts[7] + 60] = bytes(20)  # key 7: zeroed JPEG header
    path.write_bytes(bytes(rec))
    data = FaceDataModule(train=f"recordio:{path}", image_size=8, batch_size=4, num_workers=0, skip_corrupt=True)
    assert data.num_classes == 4
    loader = data.train_dataloader()
    seen: list[int] = []
    with pytest.warns(CorruptImagesSkippedWarning, match="skipped 4 unreadable training image"):
        for batch_images, batch_labels in loader:  # 8 samples, 2 batches of 4, 4 of them dropped
            pixels = torch.round((batch_images[:, 0, 0, 0] + 1) * 127.5).long()
            assert torch.equal(pixels // 40, batch_labels)  # every surviving image still carries its own label
            seen += batch_labels.tolist()
    assert sorted(seen) == [0, 1, 2, 3]  # keys 1, 3, 6, 8
    assert loader.skipped_last_epoch == 4 and data.skipped_images == 4


@profile(max_examples=60)
@given(content=st.one_of(st.binary(max_size=40), st.from_regex(rb"\A[0-9]{1,6000},8,8\n\Z")))
@example(content=b"\xff3,8,8").via("found: UnicodeDecodeError reading a non-ASCII property file")
@example(content=b"9" * 5000 + b",8,8").via("found: int() past Python's 4300-digit limit")
def test_recordio_without_header_survives_any_property_file(content: bytes) -> None:
    # No identity header: num_classes comes from "property" ("num_classes,height,width") when it holds a usable
    # count (1 .. 2**24, the float32-exact label range), else from a scan of the labels.
    with TemporaryDirectory() as folder:
        dataset = RecordIODataset(write_headerless_recordio(Path(folder), content))
        # Either the scan's count or exactly the count the file declares, and always a usable label range.
        declared_digits = content.strip().split(b",")[0].lstrip(b"0")
        assert dataset.num_classes == NUM_CLASSES or str(dataset.num_classes).encode() == declared_digits
        assert 1 <= dataset.num_classes <= 2**24
        assert len(dataset) == NUM_IMAGES


@pytest.mark.parametrize(
    ("content", "num_classes"),
    [
        (b"7,8,8\n", 7),  # declared: trusted, even above the labels seen
        (b"0007,112,112", 7),
        (b"16777216,8,8", 2**24),  # the largest label float32 holds exactly
        (b"16777217,8,8", NUM_CLASSES),  # past it: scanned
        (b"0,8,8", NUM_CLASSES),
        (b"-5,8,8", NUM_CLASSES),
        (b"x,8,8", NUM_CLASSES),
        (b"", NUM_CLASSES),
    ],
)
def test_recordio_property_file_declares_num_classes_when_usable(tmp_path, content, num_classes):
    assert RecordIODataset(write_headerless_recordio(tmp_path, content)).num_classes == num_classes


def write_headerless_recordio(folder: Path, property_content: bytes) -> Path:
    """``train.rec`` / ``train.idx`` of :data:`HEADERLESS_RECORDS` and a ``property`` file; returns the .rec path."""
    offsets, rec = [], b""
    for record in HEADERLESS_RECORDS:
        offsets.append(len(rec))
        rec += frame_record(record)
    (folder / "train.rec").write_bytes(rec)
    (folder / "train.idx").write_text("".join(f"{k}\t{o}\n" for k, o in enumerate(offsets)))
    (folder / "property").write_bytes(property_content)
    return folder / "train.rec"


# ---- RecordIO round trips ----------------------------------------------------------------------------------------
def frames_by_spec(data: bytes, offset: int = 0, headers: list[int] | None = None) -> bytes:
    """Independent decoder from the format description: join frames until cflag 0 or 3, magic between parts."""
    parts = []
    while True:
        magic, lrecord = struct.unpack_from("<II", data, offset)
        assert magic == MAGIC
        if headers is not None:
            headers.append(offset)
        cflag, length = lrecord >> 29, lrecord & ((1 << 29) - 1)
        parts.append(data[offset + 8 : offset + 8 + length])
        offset += 8 + (length + 3) // 4 * 4
        if cflag in (0, 3):
            return MAGIC_BYTES.join(parts)


record_bytes = st.lists(st.one_of(st.binary(max_size=11), st.just(MAGIC_BYTES)), max_size=8).map(b"".join)


@profile(max_examples=200)
@given(record=record_bytes, trailing=st.binary(max_size=12))
def test_frame_record_round_trip(record: bytes, trailing: bytes) -> None:
    framed = frame_record(record)
    assert len(framed) % 4 == 0
    # Followed by anything (the next record, junk), the reader stops at the record's own end.
    data = framed + trailing
    assert read_framed_record(lambda offset, size: data[offset : offset + size], 0) == record
    headers: list[int] = []
    assert frames_by_spec(data, 0, headers) == record
    # The magic number never sits at an aligned position inside a frame: a reader can resynchronise on it.
    aligned = [offset for offset in range(0, len(framed), 4) if framed[offset : offset + 4] == MAGIC_BYTES]
    assert aligned == headers


float32s = st.floats(width=32, allow_nan=False)


@profile(max_examples=200)
@given(
    label=st.one_of(float32s, st.lists(float32s, min_size=1, max_size=5)),
    payload=record_bytes,
    ids=st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
)
def test_pack_unpack_record_round_trip(label: float | list[float], payload: bytes, ids: tuple[int, int]) -> None:
    packed = pack_record(label, payload, *ids)
    labels = [label] if isinstance(label, float) else label
    flag = 0 if isinstance(label, float) else len(labels)
    extra = b"" if flag == 0 else struct.pack(f"<{flag}f", *labels)
    assert packed == struct.pack("<IfQQ", flag, labels[0] if flag == 0 else 0.0, *ids) + extra + payload
    header, rest = unpack_record(packed)
    assert (header.flag, header.id, header.id2, rest) == (flag, *ids, payload)
    assert header.label == (labels[0] if flag == 0 else tuple(labels))
    for cut in range(len(packed) - len(payload)):  # cut inside the header or its extra labels
        with pytest.raises(RecordIOError, match=r"<record>: .*(header|extra labels)"):
            unpack_record(packed[:cut])


@profile(max_examples=60)
@given(
    class_sizes=st.lists(st.integers(0, 3), min_size=1, max_size=5).filter(any),
    order=st.randoms(use_true_random=False),
    payloads=st.lists(record_bytes, min_size=15, max_size=15),
)
def test_write_recordio_round_trip(class_sizes: list[int], order: Any, payloads: list[bytes]) -> None:
    classes = [label for label, size in enumerate(class_sizes) if size]
    order.shuffle(classes)  # classes need not be in label order, only contiguous
    labels = [label for label in classes for _ in range(class_sizes[label])]
    samples = list(zip(payloads, labels, strict=False))
    with TemporaryDirectory() as folder:
        path = Path(folder) / "train.rec"
        num_classes = max(labels) + 1  # trailing empty classes are not stored
        assert write_recordio(path, samples) == (len(samples), num_classes)
        dataset = RecordIODataset(path)
        assert (len(dataset), dataset.num_classes) == (len(samples), num_classes)
        assert [dataset.read_encoded(index) for index in range(len(samples))] == samples
        # Identity records, decoded by the spec: class c's [start, end) key range holds exactly its images.
        data = path.read_bytes()
        index = dict(line.split("\t") for line in path.with_suffix(".idx").read_text().splitlines())
        first_identity = len(samples) + 1
        for label in range(num_classes):
            record = frames_by_spec(data, int(index[str(first_identity + label)]))
            start, end = struct.unpack_from("<2f", record, 24)
            keys_of_label = [key for key in range(1, first_identity) if labels[key - 1] == label]
            assert keys_of_label == list(range(int(start), int(end)))


# =====================================================================================================================
# Verification .bin
# =====================================================================================================================
BIN_IMAGES = tuple(solid_jpeg(value) for value in (10, 90, 170, 250))
OPCODES = [opcode.code.encode("latin-1") for opcode in pickletools.opcodes]
# Opcodes whose argument is a length, a memo index or a frame size: where a wrong number becomes an allocation.
COUNTED_OPCODES = [
    opcode.code.encode("latin-1")
    for opcode in pickletools.opcodes
    if (
        opcode.arg is not None
        and (
            (opcode.arg.n < 0 and opcode.arg.n != pickletools.UP_TO_NEWLINE)
            or "PUT" in opcode.name
            or "GET" in opcode.name
        )
    )
    or opcode.name == "FRAME"
]


@st.composite
def bin_files(draw: st.DrawFn) -> bytes:
    """A valid .bin as insightface's tools (protocol 0/2, Python 3) or ``write_bin`` (protocol 5) write it."""
    pairs = draw(st.sampled_from([0, 1, 2, 3, 130]))  # 130 pairs: over 256 memo entries, so LONG_BINPUT appears
    images = draw(
        st.lists(st.one_of(st.sampled_from(BIN_IMAGES), st.binary(max_size=12)), min_size=2 * pairs, max_size=2 * pairs)
    )
    issame = draw(st.lists(st.booleans(), min_size=pairs, max_size=pairs))
    protocol = draw(st.sampled_from([0, 2, 5]))
    if protocol == 5:
        with TemporaryDirectory() as folder:
            write_bin(Path(folder) / "x.bin", images, issame)
            return (Path(folder) / "x.bin").read_bytes()
    return pickle.dumps((images, issame), protocol=protocol)


def opcode_starts(data: bytes) -> list[int]:
    return [position for _, _, position in pickletools.genops(data)]


little_endian_ints = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda value: struct.pack("<I", value)),
    st.integers(0, 2**64 - 1).map(lambda value: struct.pack("<Q", value)),
)
# Where to damage: anywhere (a fraction of the file), or ("op", which opcode, byte k of it): its code or argument, where
# lengths, memo indices and frame sizes live (random positions mostly land inside image bytes).
places = st.one_of(
    st.floats(0, 1, exclude_max=True), st.tuples(st.just("op"), st.floats(0, 1, exclude_max=True), st.integers(0, 8))
)
bin_damage = st.one_of(
    st.tuples(st.just("flip"), places, st.integers(0, 7)),
    st.tuples(st.just("write"), places, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    # Grammar-aware: a random opcode with a random (often length- or index-like) argument between two opcodes.
    st.tuples(
        st.just("opcode"),
        st.floats(0, 1, exclude_max=True),
        st.one_of(st.sampled_from(OPCODES), st.sampled_from(COUNTED_OPCODES)),
        st.one_of(st.binary(max_size=9), little_endian_ints),
    ),
)


def damage_bin(data: bytes, damage: list[tuple[Any, ...]]) -> bytes:
    boundaries = opcode_starts(data)
    content = bytearray(data)
    for kind, where, *args in damage:
        if not content:
            break
        if isinstance(where, tuple):  # byte k of an opcode of the undamaged file
            _, which, k = where
            position = boundaries[int(which * len(boundaries))] + k
        else:
            position = int(where * len(content))
        position = min(position, len(content) - (kind != "insert"))
        if kind == "flip":
            content[position] ^= 1 << args[0]
        elif kind == "write":
            content[position : position + len(args[0])] = args[0][: len(content) - position]
        elif kind == "insert":
            content[position:position] = args[0]
        elif kind == "truncate":
            del content[position:]
        else:
            boundary = boundaries[int(where * len(boundaries))]
            content[boundary:boundary] = args[0] + args[1]
    return bytes(content)


def read_bin_measured(path: Path) -> tuple[Any, BaseException | None, int]:
    """``read_bin(path)`` under tracemalloc: (result, error, peak bytes allocated while reading)."""
    tracemalloc.start()
    try:
        return read_bin(path), None, tracemalloc.get_traced_memory()[1]
    except Exception as error:  # checked by the caller
        return None, error, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_clear_bin_error(error: BaseException, path: Path) -> None:
    assert isinstance(error, (ValueError, UnsafePickleError)), repr(error)
    assert str(error).startswith(f"{path}: "), error
    assert not any(isinstance(link, MemoryError) for link in error_chain(error)), error


@profile(max_examples=250)
@given(data=bin_files(), damage=st.lists(bin_damage, min_size=1, max_size=3))
@example(data=pickle.dumps(([], []), protocol=2), damage=[("opcode", 0.9, b"r", b"\x00\x00\x00\x08")]).via(
    "found: LONG_BINPUT index 2**27 -> a 2 GiB memo table, allocated and zeroed"
)
@example(data=pickle.dumps(([], []), protocol=5), damage=[("opcode", 0.5, b"\x8e", b"\x00" * 5 + b"\x00\x00\x01")]).via(
    "found: BINBYTES8 length 2**56 -> MemoryError"
)
@example(data=pickle.dumps(([], []), protocol=5), damage=[("write", 0.18, b"\x07\0\0\0\0\0\x01")]).via(
    "found: FRAME length 2**48 -> MemoryError reading the frame from the file"
)
@example(data=pickle.dumps(([b"a", b"b"], [True]), protocol=2), damage=[("write", 0.532, b"2")]).via(
    "found: the _codecs.encode stand-in refused 'latin2' without naming the file"
)
def test_damaged_bin_reads_valid_content_or_fails_naming_the_file(data: bytes, damage: list[tuple[Any, ...]]) -> None:
    damaged = damage_bin(data, damage)
    with TemporaryDirectory() as folder:
        path = Path(folder) / "damaged.bin"
        path.write_bytes(damaged)
        result, error, peak = read_bin_measured(path)
        if error is not None:
            assert_clear_bin_error(error, path)
        else:
            images, issame = result
            assert len(images) == 2 * len(issame)
            assert all(type(image) is bytes for image in images) and all(type(flag) is bool for flag in issame)
        # No allocation beyond a small multiple of the file: a flipped length or index must not reserve gigabytes.
        assert peak < 2**20 + 64 * len(damaged), f"{peak} bytes allocated reading a {len(damaged)}-byte file"


# "Wrong types": anything picklable without a global (protocol 5), including ints past the 4300-digit str limit.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(14300, 14400).map(lambda bits: 2**bits - 1),  # past the 4300-digit int/str limit
    st.floats(),
    st.text(max_size=4),
    st.binary(max_size=6),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=2), children, max_size=2),
    ),
    max_leaves=6,
)
image_lists = st.one_of(
    st.lists(st.one_of(st.binary(max_size=6), st.binary(max_size=6).map(bytearray), values), max_size=6), values
)
flag_lists = st.one_of(st.lists(st.one_of(st.booleans(), st.sampled_from([0, 1]), values), max_size=3), values)


def valid_bin_content(content: Any) -> bool:
    """The format: a pair (list of encoded images, list of bools, 0/1 from Python 2), two images per flag."""
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        return False
    images, issame = content
    return (
        isinstance(images, (list, tuple))
        and isinstance(issame, (list, tuple))
        and all(isinstance(image, (bytes, bytearray)) for image in images)
        and all(type(flag) in (bool, int) and flag in (0, 1) for flag in issame)
        and len(images) == 2 * len(issame)
    )


@profile(max_examples=250)
@given(content=st.one_of(values, st.tuples(image_lists, flag_lists), st.lists(image_lists, max_size=3)))
@example(content=([b"a", b"b"], [2**14300])).via("found: the error message's repr() raised past the digit limit")
def test_bin_content_of_any_type_is_read_iff_it_is_a_valid_bin(content: Any) -> None:
    with TemporaryDirectory() as folder:
        path = Path(folder) / "content.bin"
        path.write_bytes(pickle.dumps(content, protocol=5))
        if valid_bin_content(content):
            images, issame = read_bin(path)
            assert images == [bytes(image) for image in content[0]] and issame == [bool(f) for f in content[1]]
            assert all(type(image) is bytes for image in images) and all(type(flag) is bool for flag in issame)
        else:
            with pytest.raises(ValueError) as raised:
                read_bin(path)
            assert str(raised.value).startswith(f"{path}: ") and len(str(raised.value)) < 400


def test_bin_shared_references_do_not_multiply_memory(tmp_path: Path) -> None:
    # One 100 kB bytearray referenced 2,000 times: a 110 kB file. Copying each reference would allocate 200 MB.
    shared = bytearray(100_000)
    path = tmp_path / "bomb.bin"
    path.write_bytes(pickle.dumps(([shared] * 2000, [True] * 1000), protocol=5))
    result, error, peak = read_bin_measured(path)
    assert error is None
    images, issame = result
    assert len(images) == 2000 and images[1999] == bytes(100_000) and sum(issame) == 1000
    assert peak < 2**20 + 64 * path.stat().st_size


@profile(max_examples=40)
@given(images=st.lists(st.one_of(st.sampled_from(BIN_IMAGES), st.binary(max_size=30)), min_size=2, max_size=6))
def test_bin_pairs_decode_or_name_the_image_and_pair(images: list[bytes]) -> None:
    images = images[: len(images) // 2 * 2]
    with TemporaryDirectory() as folder:
        path = Path(folder) / "pairs.bin"
        write_bin(path, images, [True] * (len(images) // 2))
        dataset = VerificationBinDataset(path)
        for pair in range(len(dataset)):
            try:
                first, second, issame = dataset[pair]
            except CorruptImageError as error:
                where = rf"{re.escape(str(path))} image ({2 * pair}|{2 * pair + 1}) \(pair {pair}\)"
                assert re.search(where, str(error)), error
                assert any(images[i] not in BIN_IMAGES for i in (2 * pair, 2 * pair + 1))
            else:
                assert torch.equal(first, reference_pixels(images[2 * pair])) and issame is True
                assert torch.equal(second, reference_pixels(images[2 * pair + 1]))


@profile(max_examples=100)
@given(
    pairs=st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=20), st.booleans()), max_size=4),
    protocol=st.sampled_from([0, 2, 5]),
)
def test_bin_round_trip(pairs: list[tuple[bytes, bytes, bool]], protocol: int) -> None:
    images = [image for first, second, _ in pairs for image in (first, second)]
    issame = [same for _, _, same in pairs]
    with TemporaryDirectory() as folder:
        path = Path(folder) / "pairs.bin"
        if protocol == 5:
            write_bin(path, images, issame)
        else:  # as insightface's Python 3 tools write it
            path.write_bytes(pickle.dumps((images, issame), protocol=protocol))
        assert read_bin(path) == (images, issame)


# =====================================================================================================================
# LFW list files
# =====================================================================================================================
names = st.from_regex(r"\A[A-Z][a-z]{0,4}(_[A-Z][a-z]{0,4}){0,2}\Z")
NUMBER_TOKENS = st.one_of(
    st.sampled_from(["0", "-3", "+4", "1.5", "x", "\u00b2", "\u0663", "0x10", "9999", "0007", "10000"]),
    st.integers(-10, 10**13).map(str),
    st.integers(4290, 4400).map(lambda digits: "9" * digits),  # past Python's int/str conversion limit
)
NAME_TOKENS = st.one_of(
    st.sampled_from(["Ann/Bob", "..", ".", "a\\b", "a\x00b", "A\u200bB", "Zo\u00eb", "O'Neil", "Jean-Paul"]),
    st.text(st.characters(exclude_characters="\n"), min_size=1, max_size=6),
)
# Characters where str.splitlines() or str.split() break a line that only "\n" should end.
SPLITTERS = st.sampled_from(["A\x0bB", "A\x0cB", "A\x1cB", "A\x85B", "A\u2028B", "A\rB", "2\x1c"])
FIELD_TOKENS = st.one_of(NUMBER_TOKENS, NAME_TOKENS, SPLITTERS)
BAD_UTF8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80", b"\xe2\x82"])


class ListFile:
    """A list file as lines of fields, the entries it should parse to and which lines hold counts."""

    def __init__(self, lines: list[list[str]], entries: list[Any], count_lines: set[int]) -> None:
        self.lines, self.entries, self.count_lines = lines, entries, count_lines

    def encode(self, newline: str = "\n") -> bytes:
        return "".join("\t".join(fields) + newline for fields in self.lines).encode()


@st.composite
def people_lists(draw: st.DrawFn) -> ListFile:
    folds = draw(st.integers(0, 3))  # 0: a View 1 list (one header count), else View 2 with a count per fold
    people = draw(st.lists(names, min_size=max(folds, 1), max_size=7, unique=True))
    counts = draw(st.lists(st.integers(1, 30), min_size=len(people), max_size=len(people)))
    cuts = []
    if folds > 1 and len(people) > 1:
        cuts = sorted(draw(st.lists(st.integers(1, len(people) - 1), max_size=folds - 1, unique=True)))
    groups = [people[a:b] for a, b in zip([0, *cuts], [*cuts, len(people)], strict=True)] if folds else [people]
    lines, entries, count_lines = [[str(len(groups) if folds else len(people))]], [], {1}
    for fold, group in enumerate(groups):
        if folds:
            lines.append([str(len(group))])
            count_lines.add(len(lines))
        for name in group:
            lines.append([name, str(counts[people.index(name)])])
            entries.append(PersonEntry(name, counts[people.index(name)], fold, len(lines)))
    return ListFile(lines, entries, count_lines)


@st.composite
def pairs_lists(draw: st.DrawFn) -> ListFile:
    folds, per_side = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pool = draw(st.lists(names, min_size=2, max_size=5, unique=True))
    numbers = st.integers(1, 9999)
    header = [str(per_side)] if folds == 1 and draw(st.booleans()) else [str(folds), str(per_side)]
    lines, entries = [header], []
    for fold in range(folds):
        for same in (True, False):
            for _ in range(per_side):
                first, second = draw(st.lists(st.sampled_from(pool), min_size=2, max_size=2, unique=True))
                i, j = draw(numbers), draw(numbers)
                lines.append([first, str(i), str(j)] if same else [first, str(i), second, str(j)])
                entries.append(PairEntry(first, i, first if same else second, j, same, fold, len(lines)))
    return ListFile(lines, entries, {1})


list_files = st.one_of(st.tuples(st.just("people"), people_lists()), st.tuples(st.just("pairs"), pairs_lists()))


@profile(max_examples=150)
@given(listed=list_files, newline=st.sampled_from(["\n", "\r\n"]), bom=st.booleans(), blank_tail=st.booleans())
def test_lfw_lists_round_trip(listed: tuple[str, ListFile], newline: str, bom: bool, blank_tail: bool) -> None:
    kind, file = listed
    with TemporaryDirectory() as folder:
        path = Path(folder) / f"{kind}.txt"
        path.write_bytes(b"\xef\xbb\xbf" * bom + file.encode(newline) + b"\n  \n" * blank_tail)
        assert (read_people_list if kind == "people" else read_pairs_list)(path) == file.entries


line_damage = st.one_of(
    st.tuples(st.just("field"), st.integers(0, 3), FIELD_TOKENS),
    st.tuples(st.just("field"), st.just(0), NAME_TOKENS),  # a person's name (or a count line's count)
    st.tuples(st.just("field"), st.just(-1), NUMBER_TOKENS),  # an image count or number (or a count)
    st.tuples(st.just("drop_field"), st.integers(0, 3)),
    st.tuples(st.just("add_field"), FIELD_TOKENS),
    st.tuples(st.just("bytes"), st.integers(0, 12), BAD_UTF8),
    st.tuples(st.just("blank"), st.sampled_from(["", "  ", "\t"])),
    st.tuples(st.just("delete")),
    st.tuples(st.just("duplicate")),
)


def lines_of(path: Path) -> list[bytes]:
    """The file's lines as an editor numbers them: split on newline characters only."""
    return path.read_bytes().split(b"\n")


def safe_name(name: str) -> bool:
    return name not in (".", "..") and not set(name) & set("/\\") and name.isprintable()


@profile(max_examples=300)
@given(listed=list_files, damage=st.lists(st.tuples(st.integers(0, 2**16), line_damage), min_size=1, max_size=2))
@example(
    listed=("people", ListFile([["2"], ["Ann", "2"], ["Bo", "1"]], [], {1})), damage=[(1, ("field", 1, "2\x1c"))]
).via("found: str.splitlines() also splits on \\x1c, \\x85, \\u2028...: a blank line 3 was blamed for line 2")
@example(listed=("pairs", ListFile([["1"], ["Ann", "1", "2"], ["Ann", "1", "Bo", "1"]], [], {1})), damage=[]).via(
    "the smallest pairs list parses"
)
@example(listed=("people", ListFile([["1"], ["Ann", "2"]], [], {1})), damage=[(1, ("bytes", 1, b"\xff"))]).via(
    "found: UnicodeDecodeError naming neither file nor line"
)
@example(listed=("people", ListFile([["1"], ["Ann", "2"]], [], {1})), damage=[(1, ("field", 1, "9" * 4301))]).via(
    "found: int() raised past the 4300-digit limit, naming neither file nor line"
)
@example(listed=("people", ListFile([["1"], ["Ann", "2"]], [], {1})), damage=[(1, ("field", 1, "10" + "0" * 11))]).via(
    "found: LFWPeople hung building 10**12 sample paths"
)
@example(listed=("people", ListFile([["1"], ["Ann", "2"]], [], {1})), damage=[(1, ("field", 0, "../../etc"))]).via(
    "found: a name with a path separator read images outside the LFW folder"
)
@pytest.mark.timeout(120)
def test_damaged_lfw_lists_parse_consistently_or_name_file_and_line(
    listed: tuple[str, ListFile], damage: list[tuple[int, tuple[Any, ...]]]
) -> None:
    kind, file = listed
    lines = [("\t".join(fields)).encode() for fields in file.lines]
    blame = set(file.count_lines)  # a count line can be blamed for any damage (its count no longer matches)
    structural = False
    for where, (action, *args) in damage:
        number = where % len(lines)  # 0-based
        fields = lines[number].split(b"\t")
        if action == "field":
            fields[args[0] % len(fields)] = args[1].encode()
        elif action == "drop_field":
            del fields[args[0] % len(fields)]
        elif action == "add_field":
            fields.append(args[0].encode())
        elif action == "bytes":
            joined = b"\t".join(fields)
            fields = [joined[: args[0]] + args[1] + joined[args[0] :]]
        elif action == "blank":
            fields = [args[0].encode()]
        if action in ("delete", "duplicate"):
            structural = True
            lines[number : number + 1] = [] if action == "delete" else [lines[number]] * 2
            if not lines:
                lines = [b""]
        else:
            lines[number] = b"\t".join(fields)
            blame.add(number + 1)
            # A damaged count changes which lines the parser expects where: any later line can then be blamed. So does
            # a people list's line 2, whose field count tells a View 1 list from a View 2 one (fold counts).
            structural |= number + 1 in file.count_lines or (kind == "people" and number == 1)
    with TemporaryDirectory() as folder:
        root = Path(folder)
        path = root / ("peopleDevTrain.txt" if kind == "people" else "pairsDevTrain.txt")
        path.write_bytes(b"\n".join(lines) + b"\n")
        parse = read_people_list if kind == "people" else read_pairs_list
        try:
            entries = parse(path)
        except ValueError as error:
            assert type(error) is ValueError, repr(error)  # not UnicodeDecodeError or another subclass
            match = re.match(rf"{re.escape(str(path))}:(\d+): ", str(error))
            assert match, error
            line = int(match.group(1))
            first = re.search(r"is listed again \(first on line (\d+)\)", str(error))  # a name now repeats
            blamed = {line, int(first.group(1))} if first else {line}
            assert 1 <= line <= len(lines_of(path)) and (structural or blamed & blame), (line, blame, error)
            event(f"{kind}: error, {'structural' if structural else 'in place'}")
            return
        event(f"{kind}: parsed, {len(damage)} damage(s)")
        # Parsed: every entry is what its (editor-numbered) line says, and its names are safe in a path.
        file_lines = lines_of(path)
        for entry in entries:
            fields = file_lines[entry.line - 1].decode().split()
            if kind == "people":
                assert [entry.name, entry.num_images] == [fields[0], int(fields[1])]
                assert safe_name(entry.name) and 1 <= entry.num_images <= 9999
            else:
                expected = fields if len(fields) == 4 else [fields[0], fields[1], fields[0], fields[2]]
                assert [entry.name1, entry.number1, entry.name2, entry.number2] == [
                    expected[0],
                    int(expected[1]),
                    expected[2],
                    int(expected[3]),
                ]
                assert safe_name(entry.name1) and safe_name(entry.name2)
                assert min(entry.number1, entry.number2) >= 1 and max(entry.number1, entry.number2) <= 9999
        if kind == "people":  # the dataset built on it indexes every image without touching the disk
            (root / "lfw-deepfunneled").mkdir()
            people = LFWPeople(root, "dev_train", check_files=False)
            assert len(people) == sum(entry.num_images for entry in entries)
        else:
            (root / "lfw-deepfunneled").mkdir()
            assert len(LFWPairs(root, "dev_train", check_files=False)) == len(entries)
