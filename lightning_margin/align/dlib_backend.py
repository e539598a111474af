"""The offline detector: dlib's HOG face detector, its CNN ("mmod") detector as a fallback, and its 68 landmarks.

King, "Dlib-ml: A Machine Learning Toolkit", JMLR 10, 2009 (the HOG + linear SVM detector after Dalal & Triggs,
CVPR 2005; the CNN detector trained with max-margin object detection, King, arXiv:1502.00046); Kazemi & Sullivan,
"One Millisecond Face Alignment with an Ensemble of Regression Trees", CVPR 2014 (the 68-point shape predictor).

Nothing is downloaded: ``pip install "lightning-margin[align]"`` installs ``dlib-bin`` (dlib's wheels) and
``face-recognition-models``, whose ``models/*.dat`` files are found through the package's installed-file list
(:func:`model_file`); the package itself is never imported (its ``__init__`` needs ``pkg_resources``, which current
setuptools no longer ships). The model files are released into the public domain by their author (the package's
licence is CC0), but:

* ``shape_predictor_68_face_landmarks.dat`` is trained on iBUG 300-W, whose licence excludes commercial use, and dlib
  documents that the model therefore cannot be used in a commercial product;
* ``mmod_human_face_detector.dat`` (the CNN detector, used only when HOG finds nothing) is trained on faces dlib's
  author annotated in public sets (ImageNet, AFLW, Pascal VOC, VGG, WIDER, FaceScrub);
* the HOG detector is compiled into dlib (Boost Software License).

The five ArcFace landmarks come from the 68 points (:func:`landmarks_from_68`): each eye's centre is the mean of its
six points, the nose tip is point 30, the mouth corners are points 48 and 54 (0-based, iBUG numbering).
"""

from __future__ import annotations

import importlib.metadata
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lightning_margin._validation import check_integer
from lightning_margin.align.detect import DetectedFace, register_detector
from lightning_margin.align.transform import check_landmarks

__all__ = ["LANDMARKS_68_MODEL", "MMOD_MODEL", "MODELS_DISTRIBUTION", "DlibDetector", "landmarks_from_68", "model_file"]

#: The installed distribution holding dlib's model files.
MODELS_DISTRIBUTION = "face_recognition_models"
#: The 68-point shape predictor (iBUG 300-W: not for commercial use).
LANDMARKS_68_MODEL = "shape_predictor_68_face_landmarks.dat"
#: The CNN face detector (CC0).
MMOD_MODEL = "mmod_human_face_detector.dat"
_INSTALL = 'pip install "lightning-margin[align]" (dlib-bin and face-recognition-models)'

# iBUG 68-point indices (0-based) of the five ArcFace landmarks.
_LEFT_EYE = slice(36, 42)  # the subject's right eye: smaller x in the image
_RIGHT_EYE = slice(42, 48)
_NOSE_TIP = 30
_MOUTH_LEFT, _MOUTH_RIGHT = 48, 54


def landmarks_from_68(points: Any) -> np.ndarray:
    """The five ArcFace landmarks ``(5, 2)`` from the 68 iBUG points: eye centres (mean of each eye's six points),
    nose tip (30), mouth corners (48, 54).

    Example:
        >>> points = np.zeros((68, 2))
        >>> points[36:42], points[42:48], points[30] = [10, 0], [20, 0], [15, 5]
        >>> points[48], points[54] = [11, 9], [19, 9]
        >>> landmarks_from_68(points).tolist()
        [[10.0, 0.0], [20.0, 0.0], [15.0, 5.0], [11.0, 9.0], [19.0, 9.0]]
    """
    points = check_landmarks(points, 68, "68-point landmarks")
    return np.stack(
        [
            points[_LEFT_EYE].mean(axis=0),
            points[_RIGHT_EYE].mean(axis=0),
            points[_NOSE_TIP],
            points[_MOUTH_LEFT],
            points[_MOUTH_RIGHT],
        ]
    )


def model_file(name: str) -> Path:
    """The path of one of dlib's model files (``name`` such as :data:`LANDMARKS_68_MODEL`), as installed by
    ``face-recognition-models``, found through its installed-file list without importing it.

    Raises:
        ImportError: if the package is not installed (saying how to install it).
        FileNotFoundError: if it holds no such file.

    Example:
        >>> model_file(LANDMARKS_68_MODEL).name  # doctest: +SKIP
        'shape_predictor_68_face_landmarks.dat'
    """
    try:
        distribution = importlib.metadata.distribution(MODELS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"dlib's model files are not installed: {_INSTALL}") from None
    for file in distribution.files or ():
        if file.name == name:
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{MODELS_DISTRIBUTION} {distribution.version} holds no {name}; reinstall it: {_INSTALL}")


def _dlib() -> Any:
    try:
        import dlib
    except ImportError:
        raise ImportError(f"the 'dlib' detector needs dlib: {_INSTALL}") from None
    return dlib


# Loaded once per process (the 68-point model is 100 MB): every DlibDetector shares them, and worker processes
# forked after the first detector was built inherit them.
@lru_cache(maxsize=1)
def _hog_detector() -> Any:
    return _dlib().get_frontal_face_detector()


@lru_cache(maxsize=1)
def _shape_predictor() -> Any:
    return _dlib().shape_predictor(str(model_file(LANDMARKS_68_MODEL)))


@lru_cache(maxsize=1)
def _cnn_detector() -> Any:
    return _dlib().cnn_face_detection_model_v1(str(model_file(MMOD_MODEL)))


@register_detector("dlib")
class DlibDetector:
    """dlib's HOG detector, its CNN detector when HOG finds no face, and the 68-point landmarks.

    Measured on LFW's 13,233 images: HOG (upsample 1) finds a face in 13,166, the CNN detector in the other 67; HOG
    takes about 27 ms of CPU per 250x250 image, with the 68 landmarks 30 ms, the CNN detector 1-3 s (it runs only
    when HOG finds nothing).

    Args:
        upsample: How many times both detectors double the image first (1 finds faces down to about 40 px).
        cnn_fallback: Run the CNN detector on images where HOG finds no face.

    Scores: the HOG detector's SVM margin, or the CNN detector's confidence for its detections (different scales).
    Boxes: dlib's rectangles, right and bottom made exclusive (``x2 = right + 1``).

    Example:
        >>> detector = DlibDetector(upsample=1)  # doctest: +SKIP
        >>> faces = detector(np.asarray(Image.open("photo.jpg").convert("RGB")))  # doctest: +SKIP
        >>> faces[0].points.shape  # doctest: +SKIP
        (68, 2)
    """

    def __init__(self, upsample: int = 1, cnn_fallback: bool = True) -> None:
        self.upsample = check_integer("upsample", upsample, minimum=0)
        self.cnn_fallback = bool(cnn_fallback)
        self._hog = _hog_detector()
        self._predictor = _shape_predictor()

    def __call__(self, image: np.ndarray) -> list[DetectedFace]:
        rectangles, scores, _ = self._hog.run(image, self.upsample, 0.0)
        found = list(zip(rectangles, scores, strict=True))
        if not found and self.cnn_fallback:
            found = [(detection.rect, detection.confidence) for detection in _cnn_detector()(image, self.upsample)]
        return [self._face(image, rectangle, score) for rectangle, score in found]

    def _face(self, image: np.ndarray, rectangle: Any, score: float) -> DetectedFace:
        shape = self._predictor(image, rectangle)
        points = np.array([(part.x, part.y) for part in shape.parts()], dtype=np.float64)
        box = (rectangle.left(), rectangle.top(), rectangle.right() + 1, rectangle.bottom() + 1)
        return DetectedFace(box, float(score), landmarks_from_68(points), points)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(upsample={self.upsample}, cnn_fallback={self.cnn_fallback})"
