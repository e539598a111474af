"""The ArcFace 5-point alignment: the template, the least-squares similarity to it, and the warp (``norm_crop``).

Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition" (CVPR 2019), and insightface's
``face_align.norm_crop``, which every model of the field (insightface, AdaFace, CVLface) was trained on: five facial
landmarks are mapped onto five fixed points of a 112x112 crop by the similarity transform (rotation, uniform scale,
translation) that fits them best in the least-squares sense, then the image is warped with bilinear interpolation and
a black border.

* :data:`ARCFACE_TEMPLATE` and :func:`arcface_template`: the five points, and the one rule scaling them to other crop
  sizes (multiples of 112 scale them; multiples of 128 scale them and shift x by 8 px per 128).
* :func:`estimate_similarity`: Umeyama's closed-form least-squares similarity between two point sets ("Least-squares
  estimation of transformation parameters between two point patterns", IEEE TPAMI 13(4), 1991).
* :func:`similarity_transform`: five landmarks to the template, as a 2x3 matrix.
* :func:`warp_affine`: the warp, on ``[C, H, W]`` tensors, in OpenCV's ``warpAffine`` convention (pixel centres at
  integer coordinates, bilinear, border value 0), so a crop matches what users get from insightface.
* :func:`norm_crop`: the three together, a PIL image in, the aligned RGB crop out.

Coordinates are ``(x, y)`` image coordinates with pixel centres at integers (as OpenCV, dlib and insightface report
landmarks); "left" means smaller x.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as functional
from torch import Tensor

from lightning_margin._validation import check_integer
from lightning_margin.images import to_image_tensors

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "ARCFACE_SIZE",
    "ARCFACE_TEMPLATE",
    "arcface_template",
    "check_landmarks",
    "estimate_similarity",
    "image_tensor",
    "norm_crop",
    "similarity_transform",
    "source_box",
    "tensor_to_pil",
    "warp_affine",
]

#: Side of the crop the template is defined for.
ARCFACE_SIZE = 112
#: The ArcFace template: left eye, right eye, nose tip, left mouth corner, right mouth corner in a 112x112 crop
#: (insightface's ``arcface_dst``; "left" = smaller x, i.e. the subject's right eye).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
ARCFACE_TEMPLATE.setflags(write=False)
#: Smallest/largest singular value of the centred points below which they count as collinear.
_COLLINEAR = 1e-6


def arcface_template(image_size: int = ARCFACE_SIZE) -> np.ndarray:
    """The template's five points for a square crop of side ``image_size``, the way insightface scales it.

    Multiples of 112 scale the template by ``image_size / 112``; other multiples of 128 scale it by
    ``image_size / 128`` and shift x by ``8 * image_size / 128`` (the 128x128 crop is the 112x112 one with 8 more
    pixels on each side horizontally). A size that is a multiple of both (896, ...) follows the 112 rule.

    Raises:
        ValueError: for any other size.

    Example:
        >>> arcface_template(128)[0].round(4).tolist()  # the left eye, 8 px further right
        [46.2946, 51.6963]
        >>> arcface_template(224)[0].round(4).tolist()
        [76.5892, 103.3926]
    """
    size = check_integer("image_size", image_size)
    if size % ARCFACE_SIZE == 0:
        ratio, shift = size / ARCFACE_SIZE, 0.0
    elif size % 128 == 0:
        ratio = size / 128
        shift = 8.0 * ratio
    else:
        raise ValueError(f"the ArcFace crop size must be a multiple of 112 or of 128, got {image_size!r}")
    template = ARCFACE_TEMPLATE * ratio
    template[:, 0] += shift
    return template


def check_landmarks(landmarks: Any, count: int | None = 5, what: str = "landmarks") -> np.ndarray:
    """``landmarks`` as a float64 ``(N, 2)`` array of finite ``(x, y)`` points (``N == count`` when given).

    Raises:
        ValueError: saying what was received (shape, non-numbers, NaN or infinite values).

    Example:
        >>> check_landmarks([[1, 2], [3, 4]], count=2).dtype
        dtype('float64')
    """
    try:
        points = np.asarray(landmarks.detach().cpu() if isinstance(landmarks, Tensor) else landmarks, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an array of (x, y) points, got {landmarks!r}") from None
    expected = f"({count}, 2)" if count is not None else "(N, 2)"
    if points.ndim != 2 or points.shape[1] != 2 or (count is not None and points.shape[0] != count):
        raise ValueError(f"{what} must have shape {expected}, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError(f"{what} must be finite numbers, got {points.tolist()}")
    return points


def estimate_similarity(source: Any, target: Any) -> np.ndarray:
    """The similarity transform (rotation, uniform scale, translation) mapping ``source`` onto ``target`` best.

    Umeyama (1991)'s closed form of the least-squares problem ``min sum |s R p_i + t - q_i|^2`` over rotations ``R``
    (no reflection), scales ``s`` and translations ``t``: the same estimate as scikit-image's
    ``SimilarityTransform``, which insightface's ``estimate_norm`` calls. In the plane Umeyama's SVD of the 2x2
    covariance (with its sign correction against reflections) reduces to complex arithmetic: with the points centred
    and written as complex numbers ``p_i``, ``q_i``, ``s e^{i theta} = sum conj(p_i) q_i / sum |p_i|^2``, and
    ``t`` maps the source centroid onto the target's.

    Args:
        source: ``(N, 2)`` points, N >= 3, not all on one line.
        target: ``(N, 2)`` points.

    Returns:
        The float64 2x3 matrix ``[s R | t]``: ``matrix @ [x, y, 1]`` is the mapped point.

    Raises:
        ValueError: for mismatched shapes, non-finite values, or collinear (or coincident) source points, for which
            the rotation is not determined.

    Example:
        >>> square = [[0, 0], [1, 0], [1, 1], [0, 1]]
        >>> estimate_similarity(square, [[2, 2], [2, 4], [0, 4], [0, 2]]).round(6).tolist()  # x2, +90 deg, +(2, 2)
        [[0.0, -2.0, 2.0], [2.0, 0.0, 2.0]]
    """
    source_points = check_landmarks(source, None, "source points")
    target_points = check_landmarks(target, len(source_points), "target points")
    if len(source_points) < 3:
        raise ValueError(f"a similarity needs at least 3 source points, got {len(source_points)}")
    source_mean, target_mean = source_points.mean(axis=0), target_points.mean(axis=0)
    p = (source_points - source_mean) @ (1, 1j)
    q = (target_points - target_mean) @ (1, 1j)
    # Collinear: the centred points' 2x2 scatter matrix has a (relatively) zero eigenvalue; its eigenvalues are
    # (sum |p|^2 +- |sum p^2|) / 2.
    spread, anisotropy = float(np.vdot(p, p).real), abs(complex((p * p).sum()))
    if spread == 0 or spread - anisotropy <= _COLLINEAR**2 * (spread + anisotropy):
        raise ValueError(
            f"the points are collinear or coincide, so no rotation fits them: got {source_points.tolist()}"
        )
    z = complex(np.vdot(p, q)) / spread  # s e^{i theta}
    linear = np.array([[z.real, -z.imag], [z.imag, z.real]])
    return np.hstack([linear, (target_mean - linear @ source_mean)[:, None]])


def similarity_transform(landmarks: Any, image_size: int = ARCFACE_SIZE) -> np.ndarray:
    """The 2x3 least-squares similarity from five landmarks to the ArcFace template of an ``image_size`` crop.

    Args:
        landmarks: ``(5, 2)``: left eye, right eye, nose tip, left and right mouth corners, in image coordinates.
        image_size: Side of the crop (a multiple of 112 or 128; see :func:`arcface_template`).

    Returns:
        The float64 2x3 matrix mapping image coordinates to crop coordinates (what ``cv2.warpAffine`` takes).

    Raises:
        ValueError: for a wrong shape, NaN or infinite values, collinear points or an unsupported size, saying what
            was received.

    Example:
        >>> similarity_transform(ARCFACE_TEMPLATE * 2 + 10).round(6) + 0.0  # a face twice as large, shifted
        array([[ 0.5,  0. , -5. ],
               [ 0. ,  0.5, -5. ]])
    """
    template = arcface_template(image_size)
    return estimate_similarity(check_landmarks(landmarks), template)


Affine = tuple[float, float, float, float, float, float]


def _affine(matrix: Any) -> Affine:
    """A checked 2x3 matrix as six floats ``(a, b, c, d, e, f)``: ``x' = a x + b y + c``, ``y' = d x + e y + f``."""
    array = np.asarray(matrix, dtype=np.float64)
    if array.shape != (2, 3) or not np.isfinite(array).all():
        raise ValueError(f"an affine matrix must be a finite 2x3 array, got {array.tolist()}")
    values: Affine = tuple(array.ravel().tolist())  # type: ignore[assignment]
    a, b, _, d, e, _ = values
    if abs(a * e - b * d) < 1e-12:
        raise ValueError(f"the affine matrix is singular (it maps the image onto a line): {array.tolist()}")
    return values


def _inverse(forward: Affine) -> Affine:
    """The inverse affine map, in closed form (a 2x2 inverse)."""
    a, b, c, d, e, f = forward
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return ia, ib, -(ia * c + ib * f), id_, ie, -(id_ * c + ie * f)


def _box(inverse: Affine, output: tuple[int, int], width: int, height: int) -> tuple[int, int, int, int] | None:
    a, b, c, d, e, f = inverse
    right, bottom = output[1] - 1, output[0] - 1
    corners = ((0, 0), (right, 0), (0, bottom), (right, bottom))
    xs = [a * x + b * y + c for x, y in corners]
    ys = [d * x + e * y + f for x, y in corners]
    # Bilinear sampling at s reads pixels floor(s) and floor(s) + 1; the map is affine, so the corners bound it.
    x0, y0 = max(math.floor(min(xs)), 0), max(math.floor(min(ys)), 0)
    x1, y1 = min(math.floor(max(xs)) + 2, width), min(math.floor(max(ys)) + 2, height)
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _output_size(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else size
    return check_integer("size", height), check_integer("size", width)


def source_box(matrix: Any, size: int | tuple[int, int], width: int, height: int) -> tuple[int, int, int, int] | None:
    """The pixels ``(x0, y0, x1, y1)`` (end exclusive) of a ``width`` x ``height`` image that a warp reads.

    Every output pixel of :func:`warp_affine` interpolates between the four source pixels around the point it maps
    back to; this box holds all of them (clipped to the image), so a warp may convert just this region. ``None``
    when the output lies wholly outside the image.

    Example:
        >>> source_box([[1, 0, -10], [0, 1, -20]], 4, 100, 100)  # a plain shift: pixels 10..13 and 20..23
        (10, 20, 15, 25)
    """
    return _box(_inverse(_affine(matrix)), _output_size(size), width, height)


@lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int) -> np.ndarray:
    """``[height * width, 3]``: each output pixel's ``(x, y, 1)``, row by row."""
    ys, xs = np.mgrid[0:height, 0:width]
    grid = np.stack([xs.ravel(), ys.ravel(), np.ones(height * width)], axis=1).astype(np.float64)
    grid.setflags(write=False)
    return grid


def warp_affine(image: Tensor, matrix: Any, size: int | tuple[int, int]) -> Tensor:
    """Warp an image ``[C, H, W]`` by an affine ``matrix``: what ``cv2.warpAffine(image, matrix, size)`` computes.

    Output pixel ``(x, y)`` is the bilinear interpolation of the input at ``matrix^-1 (x, y)``, pixel centres at
    integer coordinates; input pixels outside the image count as 0, so the border fades to black over one pixel as
    with OpenCV's ``BORDER_CONSTANT`` and ``borderValue=0``. Only the region the warp reads is converted to float
    (:func:`source_box`), and the sampling is ``torch.nn.functional.grid_sample``, so it runs on the image's device.

    Args:
        image: ``[C, H, W]``, ``uint8`` (rounded back to ``uint8``) or floating point.
        matrix: 2x3, input coordinates to output coordinates.
        size: Side of the square output, or ``(height, width)``.

    Returns:
        ``[C, height, width]``, the input's dtype.

    Example:
        >>> image = torch.arange(16, dtype=torch.uint8).view(1, 4, 4)
        >>> warp_affine(image, [[1, 0, -1], [0, 1, -1]], 2)  # shift by one pixel: the centre 2x2
        tensor([[[ 5,  6],
                 [ 9, 10]]], dtype=torch.uint8)
    """
    if image.ndim != 3:
        raise ValueError(f"warp_affine takes an image [C, H, W], got shape {tuple(image.shape)}")
    output = _output_size(size)
    inverse = _inverse(_affine(matrix))
    channels, height, width = image.shape
    box = _box(inverse, output, width, height)
    if box is None:
        return torch.zeros(channels, *output, dtype=image.dtype, device=image.device)
    x0, y0, x1, y1 = box
    # Planar float (decoded images are channels-last views): grid_sample's planar kernel is about twice as fast.
    dtype = image.dtype if image.is_floating_point() else torch.float32
    region = image[:, y0:y1, x0:x1].unsqueeze(0).to(dtype=dtype, memory_format=torch.contiguous_format)
    # grid_sample's coordinates (align_corners=False): -1 and +1 are the outer edges of the region, so the pixel
    # centre s of a region n pixels wide sits at (2 s + 1) / n - 1; s is the inverse map less the region's offset.
    a, b, c, d, e, f = inverse
    scale_x, scale_y = 2 / (x1 - x0), 2 / (y1 - y0)
    coefficients = np.array(
        [
            [a * scale_x, d * scale_y],
            [b * scale_x, e * scale_y],
            [(c - x0 + 0.5) * scale_x - 1, (f - y0 + 0.5) * scale_y - 1],
        ]
    )
    grid = _pixel_grid(*output) @ coefficients  # float64: exact to far below a pixel
    grid = torch.from_numpy(grid.astype(np.float64 if dtype == torch.float64 else np.float32, copy=False))
    sampled = functional.grid_sample(
        region, grid.view(1, *output, 2).to(image.device), mode="bilinear", padding_mode="zeros", align_corners=False
    )[0]
    if image.is_floating_point():
        return sampled
    # Rounded into a channels-last buffer ([H, W, C] memory, as decoded images are): one pass, and the crop then
    # becomes a PIL image or a NumPy array without another copy.
    crop = torch.empty(*output, channels, dtype=image.dtype, device=image.device).permute(2, 0, 1)
    return crop.copy_(sampled.round_().clamp_(0, 255))


def image_tensor(image: Any) -> Tensor:
    """One RGB ``uint8`` image ``[3, H, W]`` from a PIL image, a tensor (as :meth:`FaceEmbedder.embed` takes them:
    ``uint8``, or float in ``[0, 1]``) or a ``uint8`` NumPy array ``[H, W, 3]`` in RGB order.

    Example:
        >>> image_tensor(np.zeros((2, 5, 3), dtype=np.uint8)).shape
        torch.Size([3, 2, 5])
    """
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"a NumPy image must be uint8 [H, W, 3] (RGB), got {image.dtype} {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    tensors = to_image_tensors(image)
    if len(tensors) != 1:
        raise ValueError(f"expected one image, got {len(tensors)}")
    tensor = tensors[0]
    return tensor if tensor.dtype == torch.uint8 else tensor.round().clamp(0, 255).to(torch.uint8)


def tensor_to_pil(image: Tensor) -> Image.Image:
    """An RGB PIL image from a ``uint8`` tensor ``[3, H, W]``.

    Example:
        >>> tensor_to_pil(torch.zeros(3, 2, 5, dtype=torch.uint8)).size
        (5, 2)
    """
    from PIL import Image

    pixels = image.detach().cpu().permute(1, 2, 0)  # no copy for channels-last tensors (decoded images, warps)
    return Image.fromarray(np.ascontiguousarray(pixels.numpy()))


def norm_crop(image: Any, landmarks: Any, image_size: int = ARCFACE_SIZE) -> Image.Image:
    """The ArcFace-aligned crop of a face: insightface's ``face_align.norm_crop``, without OpenCV.

    :func:`similarity_transform` to the template of an ``image_size`` crop, then :func:`warp_affine` (bilinear,
    black border). The result agrees with insightface's (scikit-image's estimate + ``cv2.warpAffine``) to a fraction
    of a grey level on average (``tests/test_align_transform.py`` compares them on LFW faces).

    Args:
        image: A PIL image, an RGB tensor ``[3, H, W]`` or a ``uint8`` NumPy array ``[H, W, 3]`` in RGB order.
        landmarks: ``(5, 2)``: left eye, right eye, nose tip, left and right mouth corners (image coordinates).
        image_size: Side of the crop: a multiple of 112 or 128.

    Returns:
        The RGB PIL image, ``image_size`` x ``image_size``.

    Example:
        >>> from PIL import Image
        >>> photo = Image.new("RGB", (250, 250), "white")
        >>> crop = norm_crop(photo, ARCFACE_TEMPLATE + 60)
        >>> crop.size, crop.getpixel((56, 56)), crop.getpixel((111, 111))  # 60 px inside the photo: all white
        ((112, 112), (255, 255, 255), (255, 255, 255))
    """
    matrix = similarity_transform(landmarks, image_size)
    from PIL import Image

    if isinstance(image, Image.Image):
        # Convert only the pixels the warp reads: a face crop is a small part of a photo.
        box = _box(_inverse(_affine(matrix)), (image_size, image_size), *image.size)
        if box is None:
            return Image.new("RGB", (image_size, image_size))
        region = image.crop(box)
        pixels = torch.from_numpy(np.array(region if region.mode == "RGB" else region.convert("RGB")))
        pixels = pixels.permute(2, 0, 1)
        matrix = matrix.copy()
        matrix[:, 2] += matrix[:, :2] @ np.array(box[:2], dtype=np.float64)
    else:
        pixels = image_tensor(image)
    return tensor_to_pil(warp_affine(pixels, matrix, image_size))
