"""MediaPipe FaceMesh (478 points incl. irises) on RGB uint8 images."""
from __future__ import annotations

import numpy as np


class FaceMesh:
    """Dense landmarks of the faces in an image.

    `static=True` treats every call independently (photos, sparse frames); `static=False` tracks across
    consecutive video frames, which is faster and steadier. Landmarks are returned normalised to the
    image: x, y in [0, 1] and z in the same scale as x (MediaPipe's convention).
    """

    def __init__(self, static: bool = True, max_faces: int = 1, min_confidence: float = 0.5):
        from mediapipe.python.solutions.face_mesh import FaceMesh as _MPFaceMesh

        self._mesh = _MPFaceMesh(
            static_image_mode=static,
            max_num_faces=max_faces,
            refine_landmarks=True,
            min_detection_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
        )

    def __call__(self, rgb: np.ndarray) -> list[np.ndarray]:
        """A list of (478, 3) float32 arrays, one per face found (possibly empty)."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"FaceMesh expects an RGB uint8 image (H, W, 3), got {rgb.dtype} {rgb.shape}")
        result = self._mesh.process(np.ascontiguousarray(rgb))
        if not result.multi_face_landmarks:
            return []
        return [
            np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float32)
            for face in result.multi_face_landmarks
        ]

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceMesh:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def to_pixels(landmarks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised (N, 3) landmarks -> pixel coordinates (x, y, z) with z scaled like x."""
    out = landmarks.astype(np.float64).copy()
    out[:, 0] *= width
    out[:, 1] *= height
    out[:, 2] *= width
    return out


def centred_face(faces: list[np.ndarray]) -> bool:
    """Whether the first mesh of `faces` is the face a crop was centred on (a mesh far from the centre is someone
    else's); the check preprocessing and inference share."""
    return bool(faces) and float(np.abs(faces[0][:468, :2].mean(0) - 0.5).max()) < 0.25
