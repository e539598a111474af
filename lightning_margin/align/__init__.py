"""Faces from photos: 5-point alignment onto the ArcFace template, an offline detector, and ``data align``.

Every face-recognition model of the field expects faces warped onto the ArcFace 5-point template (a 112x112 crop);
an embedder fed a raw photo returns a confident but meaningless vector. This package makes those crops:

* :mod:`~lightning_margin.align.transform`: :data:`ARCFACE_TEMPLATE`, :func:`similarity_transform` (Umeyama's
  least-squares similarity), :func:`warp_affine` and :func:`norm_crop` (insightface's ``norm_crop`` without OpenCV).
* :mod:`~lightning_margin.align.detect`: :class:`DetectedFace`, :class:`FaceDetector` and the detector registry
  (:func:`register_detector`, :func:`create_detector`, :func:`list_detectors`); :func:`select_face`.
* :mod:`~lightning_margin.align.dlib_backend`: the ``"dlib"`` detector (HOG, CNN fallback, 68 landmarks), from the
  ``align`` extra: ``pip install "lightning-margin[align]"``. Nothing is downloaded at run time.
* :mod:`~lightning_margin.align.alignment`: the alignment registry (:func:`register_alignment`,
  :func:`create_alignment`, :func:`list_alignments`); ``"arcface"`` is ``norm_crop``.
* :mod:`~lightning_margin.align.dlib_chip`: the ``"dlib_chip"`` alignment, dlib's 150x150 face chip (what dlib's
  face-recognition ResNet takes), from the detector's own landmarks.
* :mod:`~lightning_margin.align.landmarks_file`: ``landmarks.tsv``, which also reads insightface's landmark lists.
* :mod:`~lightning_margin.align.folder`: ``lightning-margin data align`` (:func:`align_folder`).

Example:
    >>> from PIL import Image
    >>> photo = Image.new("RGB", (250, 250))
    >>> norm_crop(photo, ARCFACE_TEMPLATE + 60).size
    (112, 112)
"""

from lightning_margin.align import (
    dlib_backend,  # registers the "dlib" detector (dlib itself is imported when used)
    dlib_chip,  # registers the "dlib_chip" alignment
)
from lightning_margin.align.alignment import (
    AlignFunction,
    alignment_size,
    create_alignment,
    list_alignments,
    register_alignment,
)
from lightning_margin.align.detect import (
    FACE_SELECTIONS,
    DetectedFace,
    DetectorBackend,
    FaceDetector,
    create_detector,
    list_detectors,
    register_detector,
    rgb_array,
    select_face,
)
from lightning_margin.align.landmarks_file import (
    LANDMARKS_FILE,
    LandmarksRecord,
    read_landmarks_file,
    write_landmarks_file,
)
from lightning_margin.align.transform import (
    ARCFACE_SIZE,
    ARCFACE_TEMPLATE,
    arcface_template,
    estimate_similarity,
    image_tensor,
    norm_crop,
    similarity_transform,
    warp_affine,
)

__all__ = [
    "ARCFACE_SIZE",
    "ARCFACE_TEMPLATE",
    "FACE_SELECTIONS",
    "LANDMARKS_FILE",
    "AlignFunction",
    "DetectedFace",
    "DetectorBackend",
    "FaceDetector",
    "LandmarksRecord",
    "alignment_size",
    "arcface_template",
    "create_alignment",
    "create_detector",
    "dlib_backend",
    "dlib_chip",
    "estimate_similarity",
    "image_tensor",
    "list_alignments",
    "list_detectors",
    "norm_crop",
    "read_landmarks_file",
    "register_alignment",
    "register_detector",
    "rgb_array",
    "select_face",
    "similarity_transform",
    "warp_affine",
    "write_landmarks_file",
]
