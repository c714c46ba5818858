"""Face boxes in large frames. dlib's HOG detector finds small faces that MediaPipe's short-range
detector misses (see the dependency notes), and it needs no downloaded weights."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    left: float
    top: float
    right: float
    bottom: float
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def center(self) -> tuple[float, float]:
        return (self.left + self.right) / 2, (self.top + self.bottom) / 2

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)


@functools.lru_cache(maxsize=1)
def _hog():
    import dlib

    return dlib.get_frontal_face_detector()


def detect_faces(rgb: np.ndarray, upsample: int = 1) -> list[Box]:
    """Face boxes, largest first. `upsample=1` finds faces down to about 40 px."""
    rects, scores, _ = _hog().run(np.ascontiguousarray(rgb), upsample, 0.0)
    boxes = [Box(r.left(), r.top(), r.right(), r.bottom(), float(s)) for r, s in zip(rects, scores)]
    return sorted(boxes, key=lambda b: -b.area)
