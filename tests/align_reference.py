"""insightface's ``face_align.norm_crop``, rebuilt as it is written, as the reference the alignment tests compare with.

``estimate_norm`` fits scikit-image's ``SimilarityTransform`` from the landmarks to the ArcFace template scaled for the
crop size, and ``norm_crop`` warps with ``cv2.warpAffine`` (bilinear, ``borderValue=0``). scikit-image and OpenCV are
test-only dependencies (the ``dev`` extra); tests that need them skip without them.
"""

from __future__ import annotations

import numpy as np
import pytest

# insightface's arcface_dst, typed in from its source so the package's constant is checked against it.
INSIGHTFACE_TEMPLATE = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
]


def skimage_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """scikit-image's least-squares similarity (2x3), with the API of any version since 0.19."""
    transform = pytest.importorskip("skimage.transform")
    if hasattr(transform.SimilarityTransform, "from_estimate"):  # 0.26+
        return transform.SimilarityTransform.from_estimate(source, target).params[:2]
    estimated = transform.SimilarityTransform()
    estimated.estimate(source, target)
    return estimated.params[:2]


def insightface_template(size: int) -> np.ndarray:
    """estimate_norm's template for a crop of ``size``: multiples of 112 scale it, of 128 scale and shift x."""
    if size % 112 == 0:
        ratio, shift = size / 112.0, 0.0
    else:
        ratio = size / 128.0
        shift = 8.0 * ratio
    template = np.array(INSIGHTFACE_TEMPLATE, dtype=np.float32) * ratio
    template[:, 0] += shift
    return template


def insightface_norm_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """face_align.norm_crop: an RGB (or BGR) ``uint8`` array ``[H, W, 3]`` in, the ``[size, size, 3]`` crop out."""
    cv2 = pytest.importorskip("cv2")
    matrix = skimage_similarity(np.asarray(landmarks, dtype=np.float64), insightface_template(size))
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)
