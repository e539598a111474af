"""Stand-in face detectors for the ``data align`` tests, registered at import (as a user's detector module would
be), so that ``data align``'s spawned worker processes, which import this module, have them too.

``stand_in`` "finds" one face at :data:`FACE` (shifted by the image's first pixel, so that crops of different images
differ) in any image that is not black; ``broken`` fails if called (for runs that must not detect).
"""

from __future__ import annotations

import numpy as np

from lightning_margin.align import ARCFACE_TEMPLATE, DetectedFace, list_detectors, register_detector
from lightning_margin.align.detect import DetectorBackend

FACE = ARCFACE_TEMPLATE * 0.9 + [14.3, 9.7]  # inside a 130x150 photo
CALLS: list[int] = []  # detector calls made in this process
STOP_AT: list[int] = []  # raise KeyboardInterrupt at this call (an interrupted run)


def stand_in(tilt: float = 0.0) -> DetectorBackend:
    def find(image: np.ndarray) -> list[DetectedFace]:
        CALLS.append(1)
        if STOP_AT and len(CALLS) == STOP_AT[0]:
            raise KeyboardInterrupt
        if image.max() < 10:  # a black photo: no face
            return []
        shift = float(image[0, 0, 0]) / 64 + tilt
        return [DetectedFace((5.0, 5.0, 110.0, 120.0), 0.8, FACE + shift)]

    return find


def broken() -> DetectorBackend:
    def fail(image: np.ndarray) -> list[DetectedFace]:
        raise AssertionError("the detector ran although landmarks were given")

    return fail


if "stand_in" not in list_detectors():
    register_detector("stand_in")(stand_in)
    register_detector("broken")(broken)
