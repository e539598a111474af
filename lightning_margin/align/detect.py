"""Face detection: :class:`DetectedFace`, the detector registry and :class:`FaceDetector`.

A detector backend is any callable ``backend(image) -> list[DetectedFace]`` taking an RGB ``uint8`` NumPy array
``[H, W, 3]``; it is registered under a name with :func:`register_detector` (a class or a factory function; its
keyword arguments are the options :func:`create_detector` and :class:`FaceDetector` accept). The built-in one is
``"dlib"`` (:mod:`lightning_margin.align.dlib_backend`, the ``align`` extra). Plugging in your own::

    @register_detector("retinaface")
    class RetinaFaceDetector:
        def __init__(self, threshold: float = 0.5): ...
        def __call__(self, image: np.ndarray) -> list[DetectedFace]: ...

    detector = FaceDetector("retinaface", threshold=0.6)

Landmarks given by the user (an insightface list, a ``landmarks.tsv``) need no detector:
:meth:`DetectedFace.from_landmarks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from lightning_margin._validation import check_choice
from lightning_margin.align._registry import Registry
from lightning_margin.align.transform import check_landmarks, image_tensor

__all__ = [
    "FACE_SELECTIONS",
    "DetectedFace",
    "DetectorBackend",
    "FaceDetector",
    "create_detector",
    "list_detectors",
    "register_detector",
    "rgb_array",
    "select_face",
]

#: What a detector backend is: an RGB ``uint8`` array ``[H, W, 3]`` in, the faces found out (any order).
DetectorBackend = Callable[[np.ndarray], Sequence["DetectedFace"]]
#: How one face is chosen among several (:func:`select_face`).
FACE_SELECTIONS = ("largest", "center")
FaceSelection = Literal["largest", "center"]

_DETECTORS: Registry[DetectorBackend] = Registry("detector")


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array, dtype=np.float64)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """One face found in an image.

    Attributes:
        box: ``(x1, y1, x2, y2)`` in pixels, ``x2 - x1`` the width (it may reach past the image's edges); ``None``
            for landmarks given without a box.
        score: The backend's confidence (higher is surer; backends' scales differ), ``None`` when unknown.
        landmarks: ``(5, 2)`` float64, the ArcFace template's order: left eye, right eye, nose tip, left mouth
            corner, right mouth corner ("left" = smaller x), in image coordinates.
        points: The backend's own landmarks ``(N, 2)`` (dlib: its 68 points), which other alignments (dlib's face
            chip) need; the five ``landmarks`` for landmarks given by the user.

    Example:
        >>> from lightning_margin.align.transform import ARCFACE_TEMPLATE
        >>> face = DetectedFace((10, 20, 110, 140), 0.9, ARCFACE_TEMPLATE, ARCFACE_TEMPLATE)
        >>> face.width, face.height, face.area
        (100.0, 120.0, 12000.0)
    """

    box: tuple[float, float, float, float] | None
    score: float | None
    landmarks: np.ndarray
    points: np.ndarray = field(default=None)  # type: ignore[assignment]  (None: the landmarks)

    def __post_init__(self) -> None:
        landmarks = _frozen(check_landmarks(self.landmarks, 5, "a face's landmarks"))
        object.__setattr__(self, "landmarks", landmarks)
        points = landmarks if self.points is None else _frozen(check_landmarks(self.points, None, "a face's points"))
        object.__setattr__(self, "points", points)
        if self.box is not None:
            box = tuple(float(value) for value in self.box)
            if len(box) != 4 or not all(math.isfinite(value) for value in box) or box[2] < box[0] or box[3] < box[1]:
                raise ValueError(f"a face's box must be finite (x1, y1, x2, y2), x2 >= x1, y2 >= y1, got {self.box}")
            object.__setattr__(self, "box", box)
        if self.score is not None:
            object.__setattr__(self, "score", float(self.score))

    @classmethod
    def from_landmarks(cls, landmarks: Any, score: float | None = None, box: Any = None) -> DetectedFace:
        """A face known by its five landmarks only (no detector ran).

        Example:
            >>> DetectedFace.from_landmarks([[1, 1], [3, 1], [2, 2], [1, 3], [3, 3]]).box is None
            True
        """
        return cls(None if box is None else tuple(box), score, landmarks, None)

    @property
    def width(self) -> float:
        """Box width; the landmarks' extent when there is no box."""
        x1, _, x2, _ = self._extent()
        return x2 - x1

    @property
    def height(self) -> float:
        """Box height; the landmarks' extent when there is no box."""
        _, y1, _, y2 = self._extent()
        return y2 - y1

    @property
    def area(self) -> float:
        """``width * height``: what "the largest face" compares."""
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        """The box's centre (the landmarks' centre without a box)."""
        x1, y1, x2, y2 = self._extent()
        return (x1 + x2) / 2, (y1 + y2) / 2

    def _extent(self) -> tuple[float, float, float, float]:
        if self.box is not None:
            return self.box
        low, high = self.landmarks.min(axis=0), self.landmarks.max(axis=0)
        return float(low[0]), float(low[1]), float(high[0]), float(high[1])


def register_detector(name: str) -> Callable[[Any], Any]:
    """Decorator making a detector backend (class or factory) available to :class:`FaceDetector` as ``name``.

    Example:
        >>> @register_detector("everywhere")  # doctest: +SKIP
        ... def everywhere() -> DetectorBackend:
        ...     return lambda image: [DetectedFace.from_landmarks(...)]
    """
    return _DETECTORS.register(name)


def list_detectors(pattern: str = "*") -> list[str]:
    """Sorted names of the registered detector backends.

    Example:
        >>> "dlib" in list_detectors()
        True
    """
    return _DETECTORS.names(pattern)


def create_detector(name: str, **options: Any) -> DetectorBackend:
    """Build the registered backend ``name`` with its ``options``; ``ValueError`` names the accepted ones.

    Example:
        >>> create_detector("dlib", threshold=0.5)
        Traceback (most recent call last):
        ...
        ValueError: detector 'dlib' does not take 'threshold'; its options are: upsample, cnn_fallback
    """
    return _DETECTORS.create(name, **options)


def rgb_array(image: Any) -> np.ndarray:
    """An image (PIL, RGB tensor ``[3, H, W]``, or ``uint8`` array ``[H, W, 3]``) as a C-contiguous RGB ``uint8``
    array ``[H, W, 3]``: what detector backends take.

    Example:
        >>> import torch
        >>> rgb_array(torch.zeros(3, 4, 5, dtype=torch.uint8)).shape
        (4, 5, 3)
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    return np.ascontiguousarray(image_tensor(image).permute(1, 2, 0).cpu().numpy())


def select_face(
    faces: Sequence[DetectedFace], selection: FaceSelection = "largest", image_size: tuple[int, int] | None = None
) -> DetectedFace | None:
    """The face to keep when a photo shows several, ``None`` when it shows none.

    Args:
        faces: The detections.
        selection: ``"largest"`` (largest box: the subject of a portrait) or ``"center"`` (box centre nearest the
            image centre; ties: the larger): the subject of a centred crop such as LFW's, where a larger face
            sometimes stands beside the person named.
        image_size: ``(width, height)``, needed by ``"center"``.

    Example:
        >>> points = [[1, 1], [3, 1], [2, 2], [1, 3], [3, 3]]
        >>> small, big = DetectedFace((115, 115, 135, 135), 1.0, points), DetectedFace((0, 0, 60, 60), 1.0, points)
        >>> select_face([small, big]) is big, select_face([small, big], "center", (250, 250)) is small
        (True, True)
    """
    check_choice("selection", selection, FACE_SELECTIONS)
    if not faces:
        return None
    if selection == "largest":
        return max(faces, key=lambda face: face.area)
    if image_size is None:
        raise ValueError("selection='center' needs the image's size")
    middle_x, middle_y = image_size[0] / 2, image_size[1] / 2
    return min(faces, key=lambda face: (math.dist(face.center, (middle_x, middle_y)), -face.area))


class FaceDetector:
    """A face detector: the registered backend ``backend`` built with ``options``, faces sorted by score.

    Args:
        backend: A name from :func:`list_detectors` (``"dlib"``: HOG with a CNN fallback and 68 landmarks; needs
            ``pip install "lightning-margin[align]"``).
        **options: The backend's own options (``dlib``: ``upsample``, ``cnn_fallback``).

    Calling it on an image (PIL image, RGB tensor ``[3, H, W]`` or ``uint8`` array ``[H, W, 3]``) returns the faces
    found, most confident first.

    Example:
        >>> detector = FaceDetector("dlib", upsample=1)  # doctest: +SKIP
        >>> faces = detector(Image.open("group.jpg"))  # doctest: +SKIP
        >>> faces[0].box, faces[0].landmarks.shape  # doctest: +SKIP
        ((96.0, 110.0, 171.0, 185.0), (5, 2))
    """

    def __init__(self, backend: str = "dlib", **options: Any) -> None:
        check_choice("backend", backend, list_detectors())
        self.backend_name = backend
        self.options = dict(options)
        self.backend = create_detector(backend, **options)

    def __call__(self, image: Any) -> list[DetectedFace]:
        faces = list(self.backend(rgb_array(image)))
        for face in faces:
            if not isinstance(face, DetectedFace):
                raise TypeError(f"detector {self.backend_name!r} returned {type(face).__name__}, not DetectedFace")
        return sorted(faces, key=lambda face: math.inf if face.score is None else -face.score)

    def __repr__(self) -> str:
        options = "".join(f", {key}={value!r}" for key, value in self.options.items())
        return f"{type(self).__name__}({self.backend_name!r}{options})"
