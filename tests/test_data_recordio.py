"""insightface RecordIO: a hand-made file (struct, from the format spec) read back, writer round trips, bad input."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_margin.data import (
    RecordIODataset,
    RecordIOError,
    frame_record,
    pack_record,
    read_framed_record,
    unpack_record,
    write_recordio,
)

MAGIC = 0xCED7230A


def jpeg(seed: int, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def pil_pixels(data: bytes) -> torch.Tensor:
    """Independent reference decode: Pillow straight to an RGB [3, H, W] tensor."""
    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)


# ---- independent encoder written from the format description (no library code) -----------------------------------
def ir_header(flag: int, label: float, record_id: int, record_id2: int = 0) -> bytes:
    return struct.pack("<IfQQ", flag, label, record_id, record_id2)


def frame(payload: bytes, cflag: int = 0) -> bytes:
    padding = (4 - len(payload) % 4) % 4
    return struct.pack("<II", MAGIC, (cflag << 29) | len(payload)) + payload + b"\0" * padding


def write_by_hand(folder: Path, records: list[tuple[int, bytes]]) -> Path:
    """records: (key, framed bytes); writes train.rec and train.idx ('key\\toffset' lines)."""
    rec, lines, offset = bytearray(), [], 0
    for key, framed in records:
        lines.append(f"{key}\t{offset}\n")
        rec += framed
        offset += len(framed)
    (folder / "train.rec").write_bytes(bytes(rec))
    (folder / "train.idx").write_text("".join(lines))
    return folder / "train.rec"


def test_reads_a_hand_made_insightface_file(tmp_path: Path) -> None:
    images = [jpeg(seed) for seed in range(4)]
    labels = [0, 0, 1, 2]
    num_images, num_classes = 4, 3
    first_identity = num_images + 1
    records = [(0, frame(ir_header(2, 0.0, 0) + struct.pack("<2f", first_identity, first_identity + num_classes)))]
    # image 1: plain (flag 0); image 2: MS1MV2-style label array (flag 2, class first); image 3: labels whose second
    # float's bytes are the magic number at an aligned offset (28), so the record is split in two frames (cflag 1
    # then 3) with that magic number dropped, as the writer does; image 4: plain.
    records.append((1, frame(ir_header(0, 0.0, 1) + images[0])))
    records.append((2, frame(ir_header(2, 0.0, 2) + struct.pack("<2f", 0.0, 7.0) + images[1])))
    head = ir_header(2, 0.0, 3) + struct.pack("<f", 1.0)
    records.append((3, struct.pack("<II", MAGIC, (1 << 29) | len(head)) + head + frame(images[2], cflag=3)))
    records.append((4, frame(ir_header(0, 2.0, 4) + images[3])))
    ranges = [(1, 3), (3, 4), (4, 5)]
    for label, (start, end) in enumerate(ranges):
        key = first_identity + label
        records.append((key, frame(ir_header(2, 0.0, key) + struct.pack("<2f", start, end))))
    path = write_by_hand(tmp_path, records)

    dataset = RecordIODataset(path)
    assert len(dataset) == num_images
    assert dataset.num_classes == num_classes
    assert dataset.identity_range == (first_identity, first_identity + num_classes)
    got = [dataset[index] for index in range(num_images)]
    assert [label for _, label in got] == labels
    assert all(isinstance(label, int) for _, label in got)
    for index in range(num_images):
        assert torch.equal(got[index][0], pil_pixels(images[index]))
    # The split record comes back joined, with the magic number restored between the parts.
    header, payload = dataset.read_record(3)
    assert header.label == (1.0, struct.unpack("<f", struct.pack("<I", MAGIC))[0])
    assert payload == images[2]


def test_frame_record_splits_at_aligned_magic_only() -> None:
    magic = struct.pack("<I", MAGIC)
    aligned = b"abcd" + magic + b"xy"
    expected = struct.pack("<II", MAGIC, (1 << 29) | 4) + b"abcd" + struct.pack("<II", MAGIC, (3 << 29) | 2) + b"xy\0\0"
    assert frame_record(aligned) == expected
    unaligned = b"a" + magic + b"bcd"
    assert frame_record(unaligned) == struct.pack("<II", MAGIC, 8) + unaligned
    two = magic + b"1234" + magic
    # Empty first part, middle part, empty last part: cflags 1, 2, 3.
    assert frame_record(two) == (
        struct.pack("<II", MAGIC, 1 << 29)
        + struct.pack("<II", MAGIC, (2 << 29) | 4)
        + b"1234"
        + struct.pack("<II", MAGIC, 3 << 29)
    )
    for record in (aligned, unaligned, two, b"", b"abc"):
        framed = frame_record(record)
        assert len(framed) % 4 == 0
        assert read_framed_record(lambda offset, size, data=framed: data[offset : offset + size], 0) == record


def test_pack_unpack_match_ir_header_layout() -> None:
    packed = pack_record(5.0, b"img", 9, 4)
    assert packed == struct.pack("<IfQQ", 0, 5.0, 9, 4) + b"img"
    packed = pack_record([3.0, 11.0], b"", 0, 0)
    assert packed == struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 3.0, 11.0)
    header, payload = unpack_record(struct.pack("<IfQQ", 3, 0.0, 1, 2) + struct.pack("<3f", 1, 2, 3) + b"rest")
    assert (header.flag, header.label, header.id, header.id2, payload) == (3, (1.0, 2.0, 3.0), 1, 2, b"rest")


def parse_like_insightface(path: Path) -> tuple[list[int], list[bytes], list[tuple[int, int]]]:
    """An independent reader following insightface's MXFaceDataset: record 0 -> image keys -> labels, payloads."""
    index = dict(line.split("\t") for line in path.with_suffix(".idx").read_text().splitlines())
    data = path.read_bytes()

    def read(key: int) -> bytes:
        offset, parts = int(index[str(key)]), []
        while True:
            magic, lrecord = struct.unpack_from("<II", data, offset)
            assert magic == MAGIC
            cflag, length = lrecord >> 29, lrecord & ((1 << 29) - 1)
            parts.append(data[offset + 8 : offset + 8 + length])
            offset += 8 + ((length + 3) // 4) * 4
            if cflag in (0, 3):
                return struct.pack("<I", MAGIC).join(parts)

    def unpack(record: bytes) -> tuple[int, object, bytes]:
        flag, label, _, _ = struct.unpack_from("<IfQQ", record)
        if flag > 0:
            return flag, struct.unpack_from(f"<{flag}f", record, 24), record[24 + 4 * flag :]
        return flag, label, record[24:]

    flag, header0, _ = unpack(read(0))
    assert flag > 0
    labels, images = [], []
    for key in range(1, int(header0[0])):
        _, label, image = unpack(read(key))
        labels.append(int(label))
        images.append(image)
    ranges = [tuple(int(v) for v in unpack(read(key))[1]) for key in range(int(header0[0]), int(header0[1]))]
    return labels, images, ranges


def test_write_recordio_round_trip_and_insightface_layout(tmp_path: Path) -> None:
    images = [jpeg(seed) for seed in range(7)]
    # A payload containing the magic number at an aligned offset (after the 24-byte header) exercises splitting.
    images.append(struct.pack("<I", MAGIC) + images[0])
    labels = [0, 0, 0, 1, 3, 3, 2, 2]  # class order need not be sorted, but each class is contiguous
    summary = write_recordio(tmp_path / "train.rec", zip(images, labels, strict=True))
    assert summary == (8, 4)
    assert (tmp_path / "property").read_text().strip() == "4,16,16"
    read_labels, read_images, ranges = parse_like_insightface(tmp_path / "train.rec")
    assert read_labels == labels and read_images == images
    assert ranges == [(1, 4), (4, 5), (7, 9), (5, 7)]
    dataset = RecordIODataset(tmp_path / "train.rec")
    assert len(dataset) == 8 and dataset.num_classes == 4
    assert [dataset.read_encoded(index) for index in range(8)] == list(zip(images, labels, strict=True))
    assert torch.equal(dataset[3][0], pil_pixels(images[3]))
    assert not list(tmp_path.glob("*.tmp"))


def test_dataset_survives_pickling_into_another_process_state(tmp_path: Path) -> None:
    write_recordio(tmp_path / "train.rec", [(jpeg(0), 0), (jpeg(1), 1)])
    dataset = RecordIODataset(tmp_path / "train.rec")
    _ = dataset[0]  # opens the descriptor
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._fd is None
    assert clone.read_encoded(1) == dataset.read_encoded(1)


def test_writer_rejects_ungrouped_and_non_integer_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="label 0 appears again"):
        write_recordio(tmp_path / "a.rec", [(b"x", 0), (b"y", 1), (b"z", 0)])
    with pytest.raises(ValueError, match=r"sample 1: label must be an int"):
        write_recordio(tmp_path / "b.rec", [(b"x", 0), (b"y", 1.5)])
    with pytest.raises(ValueError, match="no samples"):
        write_recordio(tmp_path / "c.rec", [])
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def corrupt(path: Path, offset: int, data: bytes) -> None:
    content = bytearray(path.read_bytes())
    content[offset : offset + len(data)] = data
    path.write_bytes(bytes(content))


def offsets(path: Path) -> dict[int, int]:
    return {int(k): int(v) for k, v in (line.split("\t") for line in path.with_suffix(".idx").read_text().splitlines())}


def test_bad_magic_names_file_key_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "train.rec"
    write_recordio(path, [(jpeg(seed), seed) for seed in range(3)])
    corrupt(path, offsets(path)[2], b"\xde\xad\xbe\xef")
    dataset = RecordIODataset(path)
    assert dataset.read_encoded(0)[1] == 0  # other records still read
    with pytest.raises(
        RecordIOError, match=rf"train.rec key 2: bad magic number 0xefbeadde at byte {offsets(path)[2]}"
    ):
        dataset[1]


def test_truncated_file_names_the_record(tmp_path: Path) -> None:
    path = tmp_path / "train.rec"
    write_recordio(path, [(jpeg(seed), seed) for seed in range(3)])
    dataset = RecordIODataset(path)
    start = offsets(path)[3]
    path.write_bytes(path.read_bytes()[: start + 40])  # inside image key 3
    assert dataset.read_encoded(1)[1] == 1
    with pytest.raises(RecordIOError, match=rf"train.rec key 3: truncated record: frame at byte {start} announces"):
        dataset.read_encoded(2)
    path.write_bytes(path.read_bytes()[: start + 4])  # inside the frame header itself
    with pytest.raises(RecordIOError, match="key 3: truncated record: frame header"):
        dataset.read_encoded(2)


def test_corrupt_length_field_is_reported_as_truncation(tmp_path: Path) -> None:
    path = tmp_path / "train.rec"
    write_recordio(path, [(jpeg(seed), seed) for seed in range(3)])
    start = offsets(path)[2]
    corrupt(path, start + 4, struct.pack("<I", (1 << 29) - 1))  # cflag 0, length 2**29 - 1
    with pytest.raises(RecordIOError, match=rf"key 2: truncated record: frame at byte {start} announces 536870911"):
        RecordIODataset(path).read_encoded(1)


def test_label_outside_the_class_range_is_an_error(tmp_path: Path) -> None:
    records = [(0, frame(ir_header(2, 0.0, 0) + struct.pack("<2f", 3, 4)))]
    records += [(1, frame(ir_header(0, 0.0, 1) + jpeg(0))), (2, frame(ir_header(0, 5.0, 2) + jpeg(1)))]
    records += [(3, frame(ir_header(2, 0.0, 3) + struct.pack("<2f", 1, 3)))]
    dataset = RecordIODataset(write_by_hand(tmp_path, records))
    assert dataset.num_classes == 1 and dataset[0][1] == 0
    with pytest.raises(RecordIOError, match=r"key 2: label 5.0 is not a class index in \[0, 1\)"):
        dataset[1]


def test_file_without_identity_header_uses_property_or_scans(tmp_path: Path) -> None:
    records = [(key, frame(ir_header(0, float(label), key) + jpeg(key))) for key, label in enumerate([2, 0, 1, 2])]
    path = write_by_hand(tmp_path, records)
    scanned = RecordIODataset(path)
    assert scanned.identity_range is None
    assert len(scanned) == 4 and scanned.num_classes == 3
    assert [scanned.read_encoded(i)[1] for i in range(4)] == [2, 0, 1, 2]
    (tmp_path / "property").write_text("10,16,16\n")
    assert RecordIODataset(path).num_classes == 10


def test_missing_index_is_named(tmp_path: Path) -> None:
    (tmp_path / "train.rec").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"train\.idx"):
        RecordIODataset(tmp_path / "train.rec")
