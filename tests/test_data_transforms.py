"""Face preprocessing and decoding, checked against Pillow and hand-computed values."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from lightning_margin.data import (
    CorruptImageError,
    FaceTransform,
    center_crop,
    decode_and_transform,
    decode_image,
    horizontal_flip,
    normalize,
    preprocess_face,
    resize,
)


def encode(pixels: np.ndarray, image_format: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format=image_format)
    return buffer.getvalue()


def test_decode_matches_pillow_rgb_for_every_mode() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    for data in (encode(rgb, "PNG"), encode(grey, "PNG"), encode(rgba, "PNG"), encode(rgb, "JPEG")):
        expected = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
        decoded = decode_image(data)
        assert decoded.dtype == torch.uint8 and tuple(decoded.shape) == (3, 5, 7)
        assert torch.equal(decoded, torch.from_numpy(expected).permute(2, 0, 1))
    assert torch.equal(decode_image(encode(grey, "PNG"))[1], torch.from_numpy(grey))  # grey replicated


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "the data is empty"),
        (b"plain text, not an image", "UnidentifiedImageError"),
        (encode(np.zeros((32, 32, 3), dtype=np.uint8), "JPEG")[:200], "truncated"),
        (encode(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG")[:3000], "truncated"),
    ],
)
def test_undecodable_bytes_name_their_source(data: bytes, reason: str) -> None:
    with pytest.raises(CorruptImageError, match=f"(?i)cannot decode image faces/x.jpg: .*{reason}") as error:
        decode_image(data, "faces/x.jpg")
    assert error.value.source == "faces/x.jpg"


def test_center_crop_offsets_and_clamping() -> None:
    image = torch.arange(2 * 250 * 250).reshape(2, 250, 250)
    assert torch.equal(center_crop(image, 150), image[:, 50:200, 50:200])
    odd = torch.arange(7 * 5).reshape(1, 7, 5)
    # (7 - 4) / 2 = 1.5 rounds to 2 (banker's rounding, as torchvision), (5 - 2) / 2 = 1.5 -> 2.
    assert torch.equal(center_crop(odd, (4, 2)), odd[:, 2:6, 2:4])
    assert torch.equal(center_crop(odd, 100), odd)  # larger than the image: whole image


def test_resize_matches_pillow_bilinear_within_rounding() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (150, 150, 3), dtype=np.uint8)
    smooth = np.array(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(2)))
    ours = resize(torch.from_numpy(smooth).permute(2, 0, 1), 112)
    reference = np.array(Image.fromarray(smooth).resize((112, 112), Image.BILINEAR))
    difference = (ours.permute(1, 2, 0).int() - torch.from_numpy(reference).int()).abs()
    assert ours.dtype == torch.uint8 and tuple(ours.shape) == (3, 112, 112)
    assert difference.max() <= 2 and difference.float().mean() < 0.5
    same = torch.zeros(3, 8, 8, dtype=torch.uint8)
    assert resize(same, 8) is same


def test_normalize_formula_and_flip() -> None:
    image = torch.tensor([[[0, 51, 255]], [[10, 20, 30]], [[255, 128, 1]]], dtype=torch.uint8)
    expected = image.double() / 255 * 2 - 1
    assert torch.allclose(normalize(image).double(), expected, atol=1e-6)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    per_channel = (image.double() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(normalize(image, mean, std).double(), per_channel, atol=1e-6)
    assert horizontal_flip(image)[0, 0].tolist() == [255, 51, 0]
    with pytest.raises(ValueError, match="std must be positive"):
        normalize(image, mean, (1.0, 0.0, 1.0))


def test_preprocess_face_pipeline_and_transform_flip_probability() -> None:
    image = torch.zeros(3, 250, 250, dtype=torch.uint8)
    image[:, 50:200, 50:125] = 255  # left half of the central 150x150 crop white
    out = preprocess_face(image, 112, crop_size=150)
    assert tuple(out.shape) == (3, 112, 112)
    assert out[:, :, :50].eq(1).all() and out[:, :, 62:].eq(-1).all()
    flipped = FaceTransform(112, crop_size=150, flip_probability=1.0)(image)
    assert torch.equal(flipped, out.flip(-1))
    assert torch.equal(FaceTransform(112, crop_size=150, flip_probability=0.0)(image), out)
    torch.manual_seed(0)
    transform = FaceTransform(16, flip_probability=0.5)
    small = torch.zeros(3, 16, 16, dtype=torch.uint8)
    small[:, :, :8] = 255
    flips = sum(bool(transform(small)[0, 0, 0] < 0) for _ in range(400))
    assert 160 < flips < 240  # about half


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"image_size": (112, 0)}, "image_size must be a positive int"),
        ({"crop_size": -3}, "crop_size must be a positive int"),
        ({"mean": (0.5, 0.5)}, "mean and std need 3 values"),
        ({"flip_probability": -0.1}, r"flip_probability must be in \[0, 1\]"),
    ],
)
def test_face_transform_validates(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaceTransform(**arguments)


def face_jpeg(size: int = 250) -> bytes:
    """A smooth photo-like JPEG (JPEG's DCT scaling is only comparable to resizing on smooth content)."""
    grid = np.random.default_rng(3).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return encode(np.array(Image.fromarray(grid).resize((size, size), Image.BICUBIC)), "JPEG")


def test_crop_inside_the_decoder_equals_cropping_the_tensor() -> None:
    data = face_jpeg()
    full = decode_image(data)
    assert torch.equal(decode_image(data, crop_size=150), center_crop(full, 150))
    assert torch.equal(decode_image(data, crop_size=(100, 40)), center_crop(full, (100, 40)))
    transform = FaceTransform(112, crop_size=150)
    # 150 -> 112 is less than a 2x reduction: no DCT scaling, so both routes give identical tensors.
    assert torch.equal(transform.from_bytes(data), transform(full))
    assert torch.equal(decode_and_transform(data, "x", transform), transform(full))
    assert torch.equal(decode_and_transform(data, "x", None), full)
    assert torch.equal(decode_and_transform(data, "x", lambda image: image[0]), full[0])


def test_jpeg_dct_scaling_for_large_reductions_stays_close_to_full_decoding() -> None:
    data = face_jpeg()
    decoded = decode_image(data, target_size=112)
    assert tuple(decoded.shape) == (3, 125, 125)  # 250 / 2: still at least 112
    assert tuple(decode_image(data, target_size=60).shape) == (3, 63, 63)  # 250 / 4
    assert tuple(decode_image(data, crop_size=240, target_size=112).shape) == (3, 120, 120)
    transform = FaceTransform(112)
    fast, reference = transform.from_bytes(data), transform(decode_image(data))
    assert tuple(fast.shape) == (3, 112, 112)
    assert (fast - reference).abs().mean() < 2 / 127.5  # within about 2 grey levels on average
    png = encode(np.asarray(Image.open(io.BytesIO(data))), "PNG")
    assert tuple(decode_image(png, target_size=112).shape) == (3, 250, 250)  # DCT scaling is JPEG-only


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_shift_takes_a_replicate_padded_window_per_image(dtype: torch.dtype) -> None:
    from lightning_margin.data import random_shift

    max_shift = 2
    images = torch.randint(0, 255, (64, 3, 9, 7)).to(dtype)
    shifted = random_shift(images, max_shift, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and shifted.dtype == dtype
    # Independent construction: pad by replicating the border, then every output must be one of the (2r+1)^2
    # windows of its own padded image; over 64 images many different offsets must occur.
    padded = torch.nn.functional.pad(images.float(), (max_shift,) * 4, mode="replicate").to(dtype)
    offsets = set()
    for image, padded_image in zip(shifted, padded, strict=True):
        matches = [
            (dy, dx)
            for dy in range(2 * max_shift + 1)
            for dx in range(2 * max_shift + 1)
            if torch.equal(padded_image[:, dy : dy + 9, dx : dx + 7], image)
        ]
        assert matches, "an output is no window of the padded input"
        offsets.update(matches)
    assert len(offsets) >= 15
    assert random_shift(images, 0) is images
    with pytest.raises(ValueError, match="max_shift must be >= 0"):
        random_shift(images, -1)
