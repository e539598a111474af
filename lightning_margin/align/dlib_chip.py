"""dlib's face chip: the 150x150 crop dlib's face-recognition ResNet was trained on (``dlib.get_face_chip``).

dlib (``image_transforms/interpolation.h``: ``get_face_chip_details``, ``extract_image_chips``) makes a face chip in
three steps, which this module follows in NumPy so that the chips (and so the embeddings) match dlib's:

1. **Where** (:func:`face_chip_details`): a mean face in unit coordinates (five points for dlib's 5-point shape
   predictor: the outer and inner corner of each eye and the bottom of the nose; 32 of the 68 iBUG points otherwise:
   eyes, nose, upper lip and mouth corners) is padded (``(padding + p) / (2 padding + 1)``, 0.25 by default) and scaled
   to the chip size; the least-squares similarity from those chip points to the face's landmarks (Umeyama, as
   :func:`~lightning_margin.align.transform.estimate_similarity` computes it) gives the chip's rotation angle and
   scale, and the image rectangle the chip covers: centred on the image of the chip centre, ``size * scale - 1``
   pixels wide between its first and last pixel centres.
2. **Image pyramid** (:func:`pyramid_down`): when that rectangle, halved, still holds more pixels than the chip,
   dlib first halves the image (a 5-tap ``[1 4 6 4 1]`` binomial filter in each direction, integer arithmetic,
   every other pixel), as often as needed, so that bilinear sampling does not alias. Its coordinate map is dlib's
   ``p / 2 - (1.25, 0.75)``.
3. **Sampling** (:func:`extract_face_chip`): each chip pixel maps, by the affine map taking the chip's corners onto
   the rotated rectangle's, to a point of the (halved) image, which is interpolated bilinearly from its four
   neighbours and truncated to an integer; a point whose neighbours are not all inside the image, or inside the
   region dlib cut out around the rectangle, gives black.

Example:
    >>> import numpy as np
    >>> photo = np.zeros((250, 250, 3), dtype=np.uint8)
    >>> points = np.array([[165.0, 100], [140, 102], [80, 100], [105, 102], [122, 150]])  # dlib's 5-point order
    >>> details = face_chip_details(points)
    >>> details.rows, details.cols, round(details.angle, 2), extract_face_chip(photo, details).shape  # a level face
    (150, 150, 0.0, (150, 150, 3))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_margin._validation import check_integer, check_non_negative
from lightning_margin.align.alignment import AlignFunction, register_alignment
from lightning_margin.align.detect import DetectedFace
from lightning_margin.align.transform import check_landmarks, estimate_similarity

__all__ = [
    "DLIB_CHIP_PADDING",
    "DLIB_CHIP_SIZE",
    "ChipDetails",
    "dlib_chip",
    "extract_face_chip",
    "face_chip_details",
    "pyramid_down",
]

#: The chip side and padding of dlib's face-recognition model (``compute_face_descriptor``'s defaults).
DLIB_CHIP_SIZE = 150
DLIB_CHIP_PADDING = 0.25

# dlib's mean face for its 5-point shape predictor, unit coordinates: the subject's left eye outer and inner corner
# (image right), the right eye outer and inner corner (image left), the bottom of the nose.
_MEAN_FACE_5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)
# dlib's mean face for iBUG points 17..67 (x then y), of which the chip uses the eyes, nose and mouth except the
# eyebrows (17-26) and the lower lip (55-59, 65-67).
_MEAN_FACE_68_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124, 0.904991, 0.98004, 0.490127,
    0.490127, 0.490127, 0.490127, 0.36688, 0.426036, 0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825,
    0.334606, 0.260918, 0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149, 0.340985,
    0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721, 0.490127, 0.423532, 0.338094, 0.290379,
    0.428096, 0.490127, 0.552157, 0.689874, 0.553364, 0.490127, 0.42689,
)  # fmt: skip
_MEAN_FACE_68_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891, 0.0187482, 0.038915, 0.106454,
    0.203352, 0.307009, 0.409805, 0.515625, 0.587326, 0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758,
    0.179852, 0.231733, 0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099, 0.780233,
    0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805, 0.902192, 0.909281, 0.902192, 0.864805,
    0.784792, 0.778746, 0.785343, 0.778746, 0.784792, 0.824182, 0.831803, 0.824182,
)  # fmt: skip
_USED_68 = np.array([i for i in range(27, 68) if not (55 <= i <= 59 or 65 <= i <= 67)])
_MEAN_FACE_68 = np.stack([np.array(_MEAN_FACE_68_X), np.array(_MEAN_FACE_68_Y)], axis=1)[_USED_68 - 17]
# dlib's pyramid_down<2>: a down-sampled pixel p sits at 2 p + (2.5, 1.5) of the image it came from.
_PYRAMID_OFFSET = np.array([1.25, 0.75])


@dataclass(frozen=True)
class ChipDetails:
    """Where a chip lies in the image: dlib's ``chip_details``.

    Attributes:
        rect: ``(left, top, right, bottom)``, the image coordinates of the chip's corner pixel centres before the
            rotation (right - left + 1 = the chip's width in image pixels).
        angle: Rotation about the rectangle's centre, radians.
        rows: Chip height in pixels.
        cols: Chip width in pixels.
    """

    rect: tuple[float, float, float, float]
    angle: float
    rows: int
    cols: int


def face_chip_details(points: Any, size: int = DLIB_CHIP_SIZE, padding: float = DLIB_CHIP_PADDING) -> ChipDetails:
    """Where dlib's ``get_face_chip_details`` puts the chip of a face with these landmarks.

    Args:
        points: ``(5, 2)`` landmarks of dlib's 5-point shape predictor or ``(68, 2)`` iBUG landmarks, ``(x, y)``.
        size: Chip side in pixels.
        padding: Margin around the mean face, as a fraction of its size.

    Raises:
        ValueError: for another number of points, non-finite values, or a bad size / padding.

    Example:
        >>> corners = _MEAN_FACE_5 * 100 + 20  # dlib's mean face, 100 px: 2/3 px per chip px, centre at 70
        >>> [round(value, 3) for value in face_chip_details(corners, size=150, padding=0.0).rect]  # 70 -/+ 49.5
        [20.5, 20.5, 119.5, 119.5]
    """
    check_integer("size", size)
    check_non_negative("padding", padding)
    landmarks = check_landmarks(points, None, "a face's points")
    if len(landmarks) == 5:
        template = _MEAN_FACE_5
    elif len(landmarks) == 68:
        template, landmarks = _MEAN_FACE_68, landmarks[_USED_68]
    else:
        raise ValueError(f"dlib's face chip needs 5 (dlib's 5-point model) or 68 (iBUG) points, got {len(landmarks)}")
    chip_points = (padding + template) / (2 * padding + 1) * size
    matrix = estimate_similarity(chip_points, landmarks)  # chip -> image
    column = matrix[:, 0]  # the image of the unit x vector: scale and rotation
    angle, scale = math.atan2(column[1], column[0]), math.hypot(column[0], column[1])
    centre = matrix[:, :2] @ np.array([size / 2.0, size / 2.0]) + matrix[:, 2]
    half = (size * scale - 1) / 2  # dlib's centered_drect: the width counts both end pixels
    rect = (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)
    return ChipDetails(tuple(float(value) for value in rect), float(angle), size, size)  # type: ignore[arg-type]


def _area(rect: tuple[float, float, float, float]) -> float:
    left, top, right, bottom = rect
    if left > right or top > bottom:
        return 0.0
    return (right - left + 1) * (bottom - top + 1)


def _rect_down(rect: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    left, top, right, bottom = rect
    (left, top), (right, bottom) = np.array([[left, top], [right, bottom]]) / 2 - _PYRAMID_OFFSET
    return float(left), float(top), float(right), float(bottom)


def _rotate(centre: np.ndarray, point: np.ndarray, angle: float) -> np.ndarray:
    cos, sin = math.cos(angle), math.sin(angle)
    x, y = point - centre
    return np.array([cos * x - sin * y, sin * x + cos * y]) + centre


def _corners(rect: tuple[float, float, float, float], angle: float) -> np.ndarray:
    """Top-left, top-right, bottom-left, bottom-right corners of ``rect`` rotated by ``angle`` about its centre."""
    left, top, right, bottom = rect
    centre = np.array([(left + right) / 2, (top + bottom) / 2])
    points = [(left, top), (right, top), (left, bottom), (right, bottom)]
    return np.stack([_rotate(centre, np.array(point, dtype=np.float64), angle) for point in points])


def pyramid_down(image: np.ndarray) -> np.ndarray:
    """Half an RGB ``uint8`` image ``[H, W, 3]`` as dlib's ``pyramid_down<2>`` does.

    A separable 5-tap ``[1, 4, 6, 4, 1]`` filter, evaluated at every other pixel (output pixel ``(r, c)`` covers
    input rows ``2r .. 2r + 4`` and columns ``2c .. 2c + 4``), summed in integers and divided by 256 with truncation.
    The output is ``[(H - 3) // 2, (W - 3) // 2, 3]``; images of 8 pixels or fewer on a side give an empty one.

    Example:
        >>> pyramid_down(np.full((10, 12, 3), 200, dtype=np.uint8)).shape
        (3, 4, 3)
    """
    height, width = image.shape[:2]
    if height <= 8 or width <= 8:
        return np.zeros((0, 0, 3), dtype=np.uint8)
    weights = (1, 4, 6, 4, 1)
    source = image.astype(np.int64)
    out_width, out_height = (width - 3) // 2, (height - 3) // 2
    rows = sum(w * source[:, k : k + 2 * out_width : 2] for k, w in enumerate(weights))
    filtered = sum(w * rows[k : k + 2 * out_height : 2] for k, w in enumerate(weights))
    return (filtered // 256).astype(np.uint8)


def _bilinear(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """dlib's ``interpolate_bilinear`` at points ``(xs, ys)``: 0 where a neighbour is outside, else truncated."""
    height, width = image.shape[:2]
    left, top = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    inside = (left >= 0) & (top >= 0) & (left + 1 < width) & (top + 1 < height)
    left, top = np.where(inside, left, 0), np.where(inside, top, 0)
    # The same operations in the same order as dlib, in double precision, so values truncate alike.
    lr, tb = (xs - left)[..., None], (ys - top)[..., None]
    source = image.astype(np.float64)
    tl, tr = source[top, left], source[top, left + 1]
    bl, br = source[top + 1, left], source[top + 1, left + 1]
    value = (1 - tb) * ((1 - lr) * tl + lr * tr) + tb * ((1 - lr) * bl + lr * br)
    return np.where(inside[..., None], value, 0.0).astype(np.uint8)


def extract_face_chip(image: np.ndarray, details: ChipDetails) -> np.ndarray:
    """The chip ``details`` describes, cut from an RGB ``uint8`` image ``[H, W, 3]`` as dlib's ``extract_image_chip``.

    Returns:
        ``uint8 [rows, cols, 3]``.

    Example:
        >>> image = np.zeros((200, 200, 3), dtype=np.uint8)
        >>> extract_face_chip(image, ChipDetails((20.0, 20.0, 169.0, 169.0), 0.1, 150, 150)).shape
        (150, 150, 3)
    """
    rows, cols = details.rows, details.cols
    height, width = image.shape[:2]
    size = rows * cols
    # How many halvings keep the rectangle at least as large as the chip; dlib's region around the rotated
    # rectangle, grown by 2 px per level (and 2 more), rounded to whole pixels and clipped to the image.
    depth, grow, rect = 0, 2.0, _rect_down(details.rect)
    while _area(rect) > size:
        rect, depth, grow = _rect_down(rect), depth + 1, grow * 2 + 2
    corners = _corners(details.rect, details.angle)
    low = np.maximum(corners.min(axis=0) - grow, 0.0)
    high = np.minimum(corners.max(axis=0) + grow, [width - 1.0, height - 1.0])
    if (low > high).any():
        return np.zeros((rows, cols, 3), dtype=np.uint8)
    x0, y0, x1, y1 = (math.floor(value + 0.5) for value in (*low, *high))  # std::lround of values >= 0
    level_image = image[y0 : y1 + 1, x0 : x1 + 1]
    left, top, right, bottom = details.rect
    rect = (left - x0, top - y0, right - x0, bottom - y0)
    level = -1
    while _area(_rect_down(rect)) > size:
        level, rect = level + 1, _rect_down(rect)
    for _ in range(level + 1):
        level_image = pyramid_down(level_image)
    # The affine map taking the chip's corners (0, 0), (cols - 1, 0), (0, rows - 1) onto the rotated rectangle's.
    top_left, top_right, bottom_left, _ = _corners(rect, details.angle)
    x_axis = (top_right - top_left) / max(cols - 1, 1)
    y_axis = (bottom_left - top_left) / max(rows - 1, 1)
    ys, xs = np.mgrid[0:rows, 0:cols].astype(np.float64)
    sample_x = top_left[0] + xs * x_axis[0] + ys * y_axis[0]
    sample_y = top_left[1] + xs * x_axis[1] + ys * y_axis[1]
    return _bilinear(level_image, sample_x, sample_y)


@register_alignment("dlib_chip")
def dlib_chip(image_size: int = DLIB_CHIP_SIZE, padding: float = DLIB_CHIP_PADDING) -> AlignFunction:
    """dlib's face chip of ``image_size`` pixels (150 for its face-recognition model) from ``face.points``.

    The points are the detector's own: five from dlib's 5-point shape predictor, or dlib's 68 iBUG points. A face
    known only by its five ArcFace landmarks (:meth:`DetectedFace.from_landmarks`) raises ``ValueError``.

    Example:
        >>> align = dlib_chip()
        >>> points = _MEAN_FACE_5 * 100 + 50  # where dlib's 5-point predictor put its landmarks
        >>> face = DetectedFace(None, None, [[80, 80], [120, 80], [100, 100], [85, 120], [115, 120]], points)
        >>> align(torch.zeros(3, 250, 250, dtype=torch.uint8), face).shape
        torch.Size([3, 150, 150])
    """
    check_integer("image_size", image_size)
    check_non_negative("padding", padding)

    def align(image: Tensor, face: DetectedFace) -> Tensor:
        if face.points is face.landmarks:  # DetectedFace.from_landmarks: the ArcFace five, not dlib's
            raise ValueError(
                "dlib_chip needs dlib's own landmarks in face.points (its 5-point or 68-point shape predictor's, as "
                "the dlib detector gives them); this face has only the five ArcFace landmarks (eye centres, nose "
                "tip, mouth corners), which are other points"
            )
        details = face_chip_details(face.points, image_size, padding)
        pixels = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
        return torch.from_numpy(extract_face_chip(pixels, details)).permute(2, 0, 1).to(image.device)

    return align
