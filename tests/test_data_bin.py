"""Verification .bin: round trips, Python 2/3 pickle variants, and hostile pickles refused without running code."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_margin.data import UnsafePickleError, VerificationBinDataset, read_bin, write_bin


def jpeg(seed: int, size: int = 12) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_write_then_read_gives_identical_bytes_and_labels(tmp_path: Path) -> None:
    images = [jpeg(seed) for seed in range(6)]
    issame = [True, False, True]
    write_bin(tmp_path / "pairs.bin", images, issame)
    assert read_bin(tmp_path / "pairs.bin") == (images, issame)
    # What insightface's loader does with the file gives the same content.
    with open(tmp_path / "pairs.bin", "rb") as file:
        bins, issame_list = pickle.load(file, encoding="bytes")
    assert list(bins) == images and list(issame_list) == issame


def test_protocol_0_to_2_pickles_from_python_3_load(tmp_path: Path) -> None:
    images = [jpeg(seed) for seed in range(4)]
    for protocol in (0, 1, 2):
        path = tmp_path / f"p{protocol}.bin"
        path.write_bytes(pickle.dumps((images, [True, False]), protocol=protocol))
        assert b"_codecs" in path.read_bytes()  # bytes pickled through _codecs.encode, the one admitted global
        assert read_bin(path) == (images, [True, False])


def test_python_2_style_string_opcodes_load_as_bytes(tmp_path: Path) -> None:
    # Protocol 2 as Python 2 wrote it: str images as SHORT_BINSTRING (opcode 'U'), bools as NEWTRUE/NEWFALSE.
    data = b"\x80\x02]q\x00(U\x03abcU\x02deU\x01fU\x02ghe]q\x01(\x88\x89e\x86q\x02."
    pickletools.dis(data, out=io.StringIO())  # well-formed
    (tmp_path / "py2.bin").write_bytes(data)
    assert read_bin(tmp_path / "py2.bin") == ([b"abc", b"de", b"f", b"gh"], [True, False])


class CreatesAFile:
    """A classic malicious pickle: unpickling calls open(target, "w"), creating the file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.target), "w"))


def test_hostile_pickle_is_refused_without_running_code(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([CreatesAFile(target), b"x"], [True])))
    with pytest.raises(UnsafePickleError, match=r"evil\.bin: refusing to load global 'io\.open'"):
        read_bin(path)
    assert not target.exists()
    with pytest.raises(UnsafePickleError):
        VerificationBinDataset(path)
    assert not target.exists()
    # The payload is live: the standard unpickler does create the file (proof the test guards something real).
    with open(path, "rb") as file:
        pickle.load(file)[0][0].close()
    assert target.exists()


def test_codec_shim_refuses_anything_but_latin1_of_str(tmp_path: Path) -> None:
    # _codecs.encode("...", "zlib_codec") would decompress attacker data; only latin-1 of a str is allowed.
    data = b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00aX\n\x00\x00\x00zlib_codecq\x01\x86q\x02Rq\x03."
    (tmp_path / "codec.bin").write_bytes(data)
    with pytest.raises(UnsafePickleError, match="refusing _codecs.encode"):
        read_bin(tmp_path / "codec.bin")


def test_numpy_content_is_refused_with_a_conversion_hint(tmp_path: Path) -> None:
    path = tmp_path / "np.bin"
    path.write_bytes(pickle.dumps(([jpeg(0), jpeg(1)], np.array([True]))))
    with pytest.raises(UnsafePickleError, match=r"refusing to load global 'numpy.*convert the file once"):
        read_bin(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"images": []}, "expected a pickled \\(images, issame\\) pair, got dict"),
        (([b"a", b"b", b"c"], [True]), "3 images for 1 pairs"),
        (([b"a", "b"], [True]), "image 1 is str"),
        (([b"a", b"b"], [2]), r"issame\[0\] is 2"),
    ],
)
def test_malformed_content_names_the_file(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match=rf"bad\.bin: {message}"):
        read_bin(path)


def test_not_a_pickle_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01 not a pickle")
    with pytest.raises(ValueError, match=r"junk\.bin: not a readable verification \.bin"):
        read_bin(tmp_path / "junk.bin")


def test_write_bin_validates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="two images per pair"):
        write_bin(tmp_path / "x.bin", [b"a"], [True])
    with pytest.raises(ValueError, match=r"issame\[0\]"):
        write_bin(tmp_path / "x.bin", [b"a", b"b"], [np.bool_(True)])
    assert not os.path.exists(tmp_path / "x.bin")


def test_dataset_items_are_decoded_pairs(tmp_path: Path) -> None:
    images = [jpeg(seed) for seed in range(4)]
    write_bin(tmp_path / "pairs.bin", images, [False, True])
    dataset = VerificationBinDataset(tmp_path / "pairs.bin", transform=lambda image: image.float() / 255)
    assert len(dataset) == 2 and dataset.fold is None
    first, second, issame = dataset[1]
    expected = [torch.from_numpy(np.array(Image.open(io.BytesIO(images[i])))).permute(2, 0, 1) for i in (2, 3)]
    assert issame is True
    assert torch.equal(first, expected[0].float() / 255) and torch.equal(second, expected[1].float() / 255)
    with pytest.raises(IndexError):
        dataset[2]
