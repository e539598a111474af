"""The ArcFace template, the similarity estimate and the warp, against independent formulas and insightface's recipe.

The reference for ``norm_crop`` is insightface's ``face_align.norm_crop`` rebuilt in :mod:`tests.align_reference`:
scikit-image's ``SimilarityTransform`` estimated from the landmarks to the template, then ``cv2.warpAffine`` with its
default bilinear interpolation and ``borderValue=0`` (both test-only dependencies of the ``dev`` extra).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_margin.align import (
    ARCFACE_TEMPLATE,
    arcface_template,
    estimate_similarity,
    norm_crop,
    similarity_transform,
    warp_affine,
)
from lightning_margin.align.transform import source_box
from tests.align_reference import INSIGHTFACE_TEMPLATE, insightface_norm_crop, skimage_similarity

# Approximate landmarks of LFW's deep-funneled faces (centred, about 40 px between the eyes in 250x250).
LFW_LANDMARKS = np.array([[106.0, 114.0], [144.0, 114.0], [125.0, 136.0], [109.0, 158.0], [141.0, 158.0]])


def similarity(scale: float, angle: float, shift: tuple[float, float]) -> np.ndarray:
    cos, sin = math.cos(angle), math.sin(angle)
    return np.array([[scale * cos, -scale * sin, shift[0]], [scale * sin, scale * cos, shift[1]]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def inverse(matrix: np.ndarray) -> np.ndarray:
    linear = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear, -linear @ matrix[:, 2:]])


def expected_template(size: int) -> np.ndarray:
    """The issue's rule, written out: multiples of 112 scale; multiples of 128 scale and shift x by 8 px per 128."""
    points = np.array(INSIGHTFACE_TEMPLATE)
    if size % 112 == 0:
        return points * (size / 112)
    return points * (size / 128) + [8 * size / 128, 0]


def test_the_template_is_insightfaces_and_left_means_smaller_x():
    np.testing.assert_array_equal(ARCFACE_TEMPLATE, INSIGHTFACE_TEMPLATE)
    assert ARCFACE_TEMPLATE[0, 0] < ARCFACE_TEMPLATE[1, 0] and ARCFACE_TEMPLATE[3, 0] < ARCFACE_TEMPLATE[4, 0]
    with pytest.raises(ValueError):
        ARCFACE_TEMPLATE[0, 0] = 0.0  # read-only: nobody moves the template by accident


@pytest.mark.parametrize("size", [112, 224, 336, 128, 256, 384])
def test_the_template_scales_with_the_crop_size(size):
    np.testing.assert_allclose(arcface_template(size), expected_template(size), rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [0, 100, 120, 150, -112, 112.5])
def test_other_sizes_are_refused(size):
    with pytest.raises(ValueError, match=f"got {size}"):
        similarity_transform(LFW_LANDMARKS, size)


@pytest.mark.parametrize("size", [112, 128, 224])
def test_a_known_similarity_is_recovered_exactly(size):
    """Faces made by moving the template with a random similarity map back onto it with that similarity."""
    generator = np.random.default_rng(size)
    for _ in range(50):
        known = similarity(
            generator.uniform(0.2, 5), generator.uniform(-math.pi, math.pi), generator.uniform(-300, 300, 2)
        )
        landmarks = apply(inverse(known), expected_template(size))
        np.testing.assert_allclose(similarity_transform(landmarks, size), known, rtol=0, atol=1e-9)


def test_the_least_squares_fit_is_scikit_images():
    """On noisy landmarks (no exact similarity exists), the estimate insightface calls (scikit-image's)."""
    generator = np.random.default_rng(0)
    for _ in range(50):
        known = similarity(generator.uniform(0.5, 3), generator.uniform(-1, 1), generator.uniform(-50, 50, 2))
        landmarks = apply(inverse(known), ARCFACE_TEMPLATE) + generator.normal(0, 3, (5, 2))
        reference = skimage_similarity(landmarks, ARCFACE_TEMPLATE)
        np.testing.assert_allclose(similarity_transform(landmarks), reference, rtol=0, atol=1e-9)
        # Least squares: any other similarity [[a, -b, x], [b, a, y]] near the answer fits worse.
        fitted = similarity_transform(landmarks)
        residual = np.square(apply(fitted, landmarks) - ARCFACE_TEMPLATE).sum()
        for _ in range(20):
            a, b, x, y = generator.normal(0, 1e-3, 4)
            nudged = fitted + np.array([[a, -b, x], [b, a, y]])
            assert np.square(apply(nudged, landmarks) - ARCFACE_TEMPLATE).sum() > residual


def test_a_mirror_image_is_fitted_by_a_rotation_not_a_reflection():
    mirrored = ARCFACE_TEMPLATE * [-1, 1]
    linear = estimate_similarity(mirrored, ARCFACE_TEMPLATE)[:, :2]
    assert np.linalg.det(linear) > 0
    np.testing.assert_allclose(linear[0, 0], linear[1, 1])


@pytest.mark.parametrize(
    ("landmarks", "message"),
    [
        ([[0, 0], [1, 1], [2, 2], [3, 3], [4, 4]], r"collinear.*\[\[0\.0, 0\.0\], \[1\.0, 1\.0\]"),
        ([[5, 5]] * 5, "collinear or coincide"),
        ([[1, 2], [3, 4], [5, float("nan")], [7, 8], [9, 1]], r"finite.*nan"),
        ([[1, 2], [3, 4], [5, float("inf")], [7, 8], [9, 1]], r"finite.*inf"),
        ([[1, 2], [3, 4], [5, 6], [7, 8]], r"shape \(5, 2\), got shape \(4, 2\)"),
        (np.zeros((5, 3)), r"shape \(5, 2\), got shape \(5, 3\)"),
        (np.zeros(10), r"got shape \(10,\)"),
        ("eyes", "array of \\(x, y\\) points, got 'eyes'"),
    ],
)
def test_degenerate_landmarks_are_refused_saying_what_was_received(landmarks, message):
    with pytest.raises(ValueError, match=message):
        similarity_transform(landmarks)


def test_the_warp_reads_only_the_pixels_it_needs_and_shifts_exactly():
    image = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)
    shifted = warp_affine(image, [[1, 0, -7], [0, 1, -11]], (20, 30))  # output (x, y) = input (x + 7, y + 11)
    assert torch.equal(shifted, image[:, 11:31, 7:37])
    assert source_box([[1, 0, -7], [0, 1, -11]], (20, 30), 80, 60) == (7, 11, 38, 32)
    assert source_box([[1, 0, 500], [0, 1, 0]], 10, 80, 60) is None  # wholly outside: black
    assert warp_affine(image, [[1, 0, 500], [0, 1, 0]], 10).eq(0).all()


def test_the_warp_is_opencvs_warp_affine_with_a_black_border():
    cv2 = pytest.importorskip("cv2")
    generator = np.random.default_rng(1)
    for trial in range(40):
        pixels = generator.integers(0, 256, (int(generator.integers(20, 90)), int(generator.integers(20, 90)), 3))
        pixels = pixels.astype(np.uint8)
        # Rotations, scales and shifts that put part of the output outside the image (the border).
        matrix = similarity(
            generator.uniform(0.3, 3), generator.uniform(-math.pi, math.pi), generator.uniform(-40, 60, 2)
        )
        size = (int(generator.integers(10, 70)), int(generator.integers(10, 70)))  # (height, width)
        reference = cv2.warpAffine(pixels, matrix, size[::-1], borderValue=0.0)
        ours = warp_affine(torch.from_numpy(pixels).permute(2, 0, 1), matrix, size).permute(1, 2, 0).numpy()
        difference = np.abs(ours.astype(int) - reference)
        # OpenCV rounds coordinates to 1/32 px and weights to 1/2^15: an occasional pixel is one grey level away.
        assert difference.max() <= 1 and difference.mean() < 0.05, (trial, difference.max(), difference.mean())
        # In floating point, the exact formula (OpenCV quantises coordinates to 1/32 px for floats too).
        exact = warp_affine(torch.from_numpy(pixels).permute(2, 0, 1).double(), matrix, size).permute(1, 2, 0)
        np.testing.assert_allclose(exact.numpy(), bilinear(pixels.astype(np.float64), matrix, size), atol=1e-9)


def bilinear(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Output pixel (x, y) = the bilinear interpolation of ``image`` at matrix^-1 (x, y), zero outside: one pixel at a
    time, as the definition reads."""
    height, width = image.shape[:2]
    back = inverse(matrix)
    out = np.zeros((*size, image.shape[2]))
    for y in range(size[0]):
        for x in range(size[1]):
            source_x, source_y = back @ [x, y, 1]
            left, top = math.floor(source_x), math.floor(source_y)
            for row, weight_y in ((top, 1 - (source_y - top)), (top + 1, source_y - top)):
                for column, weight_x in ((left, 1 - (source_x - left)), (left + 1, source_x - left)):
                    if 0 <= row < height and 0 <= column < width:
                        out[y, x] += weight_y * weight_x * image[row, column]
    return out


def lfw_faces(lfw_root: Path, count: int) -> list[Path]:
    folder = lfw_root / "lfw-deepfunneled"
    paths = []
    for name in sorted(os.listdir(folder)):
        paths.extend(sorted((folder / name).glob("*.jpg")))
        if len(paths) >= count:
            return paths[:count]
    return paths


@pytest.mark.parametrize("size", [112, 128, 224])
def test_norm_crop_agrees_with_insightfaces_on_lfw_faces(lfw_root, size):
    """Real faces, landmarks moved by random similarities (tilted, small, large, near the edge: black borders)."""
    generator = np.random.default_rng(size)
    differences = []
    for path in lfw_faces(lfw_root, 20):
        photo = Image.open(path)
        centre = LFW_LANDMARKS.mean(axis=0)
        move = similarity(generator.uniform(0.6, 1.6), generator.uniform(-0.8, 0.8), generator.uniform(-60, 60, 2))
        landmarks = apply(move, LFW_LANDMARKS - centre) + centre
        reference = insightface_norm_crop(np.asarray(photo.convert("RGB")), landmarks, size)
        crop = norm_crop(photo, landmarks, size)
        assert crop.mode == "RGB" and crop.size == (size, size)
        difference = np.abs(np.asarray(crop).astype(int) - reference)
        differences.append(difference.mean())
        assert difference.mean() <= 1.0, (path.name, difference.mean())  # the bound: one grey level
        assert difference.max() <= 1, (path.name, difference.max())
    assert np.mean(differences) < 0.01


def test_norm_crop_takes_pil_tensor_and_numpy_images_alike(lfw_root):
    photo = Image.open(lfw_faces(lfw_root, 1)[0])
    pixels = np.asarray(photo.convert("RGB"))
    tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
    crops = [np.asarray(norm_crop(image, LFW_LANDMARKS)) for image in (photo, pixels, tensor, tensor.float() / 255)]
    for crop in crops[1:]:
        np.testing.assert_array_equal(crop, crops[0])
    grey = norm_crop(photo.convert("L"), LFW_LANDMARKS)  # any PIL mode: an RGB crop
    assert grey.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(grey)[..., 0], np.asarray(grey)[..., 2])


def test_norm_crop_of_a_face_already_on_the_template_is_the_image():
    image = torch.randint(0, 256, (3, 112, 112), dtype=torch.uint8)
    crop = norm_crop(image, ARCFACE_TEMPLATE)
    np.testing.assert_array_equal(np.asarray(crop), image.permute(1, 2, 0).numpy())
