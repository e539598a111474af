"""``lightning-margin data pack``: image folder -> RecordIO and pair list -> .bin, read back unchanged."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_margin.data import RecordIODataset, lfw_image_path, read_bin
from lightning_margin.data.cli import main as data_command
from lightning_margin.data.pack import main, pack_image_folder, pack_pairs_bin, read_pair_list


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def image_tree(root: Path, layout: dict[str, int]) -> dict[str, bytes]:
    written = {}
    seed = 0
    for identity, count in layout.items():
        (root / identity).mkdir(parents=True)
        for index in range(count):
            seed += 1
            written[f"{identity}/{index:02d}.jpg"] = jpeg(seed)
            (root / identity / f"{index:02d}.jpg").write_bytes(written[f"{identity}/{index:02d}.jpg"])
    return written


def test_pack_image_folder_round_trip(tmp_path: Path) -> None:
    written = image_tree(tmp_path / "faces", {"carol": 2, "alice": 3, "bob": 1})
    (tmp_path / "out").mkdir()
    summary, skipped = pack_image_folder(
        tmp_path / "faces", tmp_path / "out" / "train.rec", cache_dir=tmp_path / "cache", progress=False
    )
    assert summary == (6, 3) and skipped == 0
    dataset = RecordIODataset(tmp_path / "out" / "train.rec")
    # Sorted identities -> labels alice 0, bob 1, carol 2; images in file-name order, bytes unchanged.
    labels = {"alice": 0, "bob": 1, "carol": 2}
    expected = [(written[path], labels[path.split("/")[0]]) for path in sorted(written)]
    assert [dataset.read_encoded(index) for index in range(len(dataset))] == expected
    assert (tmp_path / "out" / "property").read_text().strip() == "3,10,12"


def test_pack_image_folder_reports_or_skips_corrupt_images(tmp_path: Path) -> None:
    image_tree(tmp_path / "faces", {"a": 2, "b": 2})
    (tmp_path / "faces" / "b" / "01.jpg").write_bytes(jpeg(9)[:50])
    with pytest.raises(ValueError, match=r"cannot decode image .*b/01\.jpg"):
        pack_image_folder(tmp_path / "faces", tmp_path / "x.rec", cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "x.rec").exists()
    summary, skipped = pack_image_folder(
        tmp_path / "faces", tmp_path / "x.rec", skip_corrupt=True, cache_dir=tmp_path / "cache", progress=False
    )
    assert summary == (3, 2) and skipped == 1


def fake_lfw_images(root: Path) -> dict[str, bytes]:
    written = {}
    for seed, (name, number) in enumerate([("Ann", 1), ("Ann", 2), ("Bob", 1), ("Cy", 1), ("Cy", 2)]):
        path = root / lfw_image_path(name, number)
        path.parent.mkdir(parents=True, exist_ok=True)
        written[lfw_image_path(name, number)] = jpeg(seed)
        path.write_bytes(written[lfw_image_path(name, number)])
    return written


def test_pack_lfw_pairs_bin_round_trip(tmp_path: Path) -> None:
    written = fake_lfw_images(tmp_path / "lfw-deepfunneled")
    (tmp_path / "pairs.txt").write_text("2\nAnn\t1\t2\nCy\t1\t2\nAnn\t2\tBob\t1\nBob\t1\tCy\t2\n")
    assert (
        pack_pairs_bin(tmp_path / "pairs.txt", tmp_path / "lfw-deepfunneled", tmp_path / "p.bin", progress=False) == 4
    )
    images, issame = read_bin(tmp_path / "p.bin")
    order = ["Ann/Ann_0001", "Ann/Ann_0002", "Cy/Cy_0001", "Cy/Cy_0002", "Ann/Ann_0002", "Bob/Bob_0001"]
    order += ["Bob/Bob_0001", "Cy/Cy_0002"]
    assert images == [written[f"{name}.jpg"] for name in order]
    assert issame == [True, True, False, False]


def test_simple_pair_list_format(tmp_path: Path) -> None:
    written = image_tree(tmp_path / "photos", {"x": 2, "y": 1})
    (tmp_path / "pairs.txt").write_text("# my pairs\nx/00.jpg\tx/01.jpg\t1\n\nx/00.jpg y/00.jpg different\n")
    pairs = read_pair_list(tmp_path / "pairs.txt", tmp_path / "photos")
    assert [pair[2] for pair in pairs] == [True, False]
    assert pairs[0][3].endswith("pairs.txt:2") and pairs[1][3].endswith("pairs.txt:4")  # comments/blanks counted
    pack_pairs_bin(tmp_path / "pairs.txt", tmp_path / "photos", tmp_path / "s.bin", progress=False)
    images, issame = read_bin(tmp_path / "s.bin")
    assert images == [written["x/00.jpg"], written["x/01.jpg"], written["x/00.jpg"], written["y/00.jpg"]]
    assert issame == [True, False]
    (tmp_path / "bad.txt").write_text("x/00.jpg\tx/01.jpg\tmaybe\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: label must be one of"):
        read_pair_list(tmp_path / "bad.txt", tmp_path / "photos")


def test_simple_pair_list_names_the_line_of_a_bad_byte_and_numbers_lines_as_an_editor(tmp_path: Path) -> None:
    image_tree(tmp_path / "photos", {"x": 2})
    # A byte-order mark, Windows line ends and a \x0b inside a path (str.splitlines would start a new line there).
    lines = [b"\xef\xbb\xbfx/00.jpg\tx/01.jpg\t1\r\n", b"x/0\x0b.jpg\tx/01.jpg\t0\r\n", b"x/00.jpg\tx/01.jpg\t1\n"]
    (tmp_path / "pairs.txt").write_bytes(b"".join(lines))
    pairs = read_pair_list(tmp_path / "pairs.txt", tmp_path / "photos")
    assert [(pair[0].name, pair[2], pair[3].rsplit(":", 1)[1]) for pair in pairs] == [
        ("00.jpg", True, "1"),
        ("0\x0b.jpg", False, "2"),
        ("00.jpg", True, "3"),
    ]
    (tmp_path / "latin1.txt").write_bytes("x/00.jpg\tx/01.jpg\t1\nx/caf\u00e9.jpg\tx/01.jpg\t0\n".encode("latin-1"))
    for list_format in ("auto", "simple"):
        with pytest.raises(ValueError, match=r"latin1\.txt:2: not UTF-8 text: byte 0xe9 at column 6"):
            read_pair_list(tmp_path / "latin1.txt", tmp_path / "photos", list_format=list_format)
    with pytest.raises(FileNotFoundError, match="pair list not found: .*absent.txt"):
        read_pair_list(tmp_path / "absent.txt", tmp_path / "photos")


def test_missing_pair_image_is_named_with_the_list_line(tmp_path: Path) -> None:
    image_tree(tmp_path / "photos", {"x": 1})
    (tmp_path / "pairs.txt").write_text("x/00.jpg\tx/00.jpg\t1\nx/00.jpg\tx/07.jpg\t0\n")
    with pytest.raises(FileNotFoundError, match=r"x/07\.jpg \(named on .*pairs\.txt:2\)"):
        pack_pairs_bin(tmp_path / "pairs.txt", tmp_path / "photos", tmp_path / "s.bin", progress=False)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image_tree(tmp_path / "faces", {"a": 2, "b": 1})
    arguments = ["recordio", str(tmp_path / "faces"), str(tmp_path / "train.rec"), "--quiet"]
    # Run as `lightning-margin data pack ...`: the data command hands the rest to pack's main.
    assert data_command(["pack", *arguments, "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "3 images, 2 identities" in capsys.readouterr().out
    assert len(RecordIODataset(tmp_path / "train.rec")) == 3
    (tmp_path / "pairs.txt").write_text("a/00.jpg\ta/01.jpg\t1\n")
    assert main(["bin", str(tmp_path / "pairs.txt"), str(tmp_path / "faces"), str(tmp_path / "p.bin"), "--quiet"]) == 0
    assert read_bin(tmp_path / "p.bin")[1] == [True]
    assert main(["bin", str(tmp_path / "nope.txt"), str(tmp_path), str(tmp_path / "q.bin"), "--quiet"]) == 1
    assert "error:" in capsys.readouterr().err
