"""Motion transfer between faces on the MediaPipe mesh: which landmarks drive the generator.

`absolute`: the driving frame's own landmarks (same-identity reenactment: the driver *is* the source
person, so its face shape is the right one).

`relative` (cross-identity): only the driver's *motion* is used. A similarity transform S (rotation,
uniform scale, translation; Umeyama on the 468 mesh points) takes the driver's first frame onto the
source's landmarks; frame t then gets

    source + A (driving_t - driving_0),      A = the linear part of S (z scaled by its scale),

so at t = 0 the landmarks are exactly the source's, the source's face shape (eye distance, jaw, nose) is
kept, and head motion and expressions are the driver's, expressed in the source's frame and scale. Like
FOMM's relative mode, this assumes the driving clip starts from a pose close to the source's.
"""
from __future__ import annotations

import numpy as np

from src.faces.align import similarity_transform

MODES = ("relative", "absolute")
MESH = slice(0, 468)  # the face mesh without the iris points (irises move with gaze, not with the head)


def transfer_motion(source: np.ndarray, driving: np.ndarray, mode: str = "relative") -> np.ndarray:
    """source (478, 3) and driving (T, 478, 3) landmarks, normalised to their crops -> (T, 478, 3)."""
    if mode not in MODES:
        raise ValueError(f"motion must be one of {', '.join(MODES)}, got '{mode}'")
    driving = np.asarray(driving, np.float64)
    if mode == "absolute":
        return driving.astype(np.float32)
    source = np.asarray(source, np.float64)
    s = similarity_transform(driving[0, MESH, :2], source[MESH, :2])
    linear = s[:, :2]
    scale = float(np.sqrt(abs(np.linalg.det(linear))))
    delta = driving - driving[:1]
    out = np.empty_like(driving)
    out[..., :2] = source[None, :, :2] + delta[..., :2] @ linear.T
    out[..., 2] = source[None, :, 2] + scale * delta[..., 2]
    return out.astype(np.float32)


def inter_ocular(landmarks: np.ndarray) -> np.ndarray:
    """Distance between the iris centres (468, 473) of (..., 478, >=2) landmarks."""
    lm = np.asarray(landmarks)
    return np.linalg.norm(lm[..., 468, :2] - lm[..., 473, :2], axis=-1)
