"""Face-motion metrics on MediaPipe landmarks: AKD, AED, APD.

The field reports these with other tools (AKD with a 68-point detector, AED and APD with 3DMM
coefficients); the paper's own 669-point detector was never released. Ours are measured on the
478-point mesh of both images, so they are comparable between methods evaluated here, not with numbers
printed in papers:

- AKD: mean 2-D distance (pixels at the evaluated resolution) between the 468 mesh points found on the
  output and on the driving frame.
- APD: the angle (degrees) of the 3-D rotation between the two meshes (similarity Procrustes on x, y, z):
  how far the output's head pose is from the driver's.
- AED: what is left after that alignment: the mean 3-D distance of the aligned meshes divided by the
  driving face's inter-ocular distance, i.e. the non-rigid (expression) difference.
"""
from __future__ import annotations

import numpy as np

from src.faces.align import umeyama

MESH = slice(0, 468)


def akd(output: np.ndarray, driving: np.ndarray, size: int) -> float:
    """Mean mesh-point distance in pixels at `size` between (478, >=2) normalised landmark sets."""
    return float(np.linalg.norm((output[MESH, :2] - driving[MESH, :2]) * size, axis=-1).mean())


def pose_and_expression(output: np.ndarray, driving: np.ndarray) -> tuple[float, float]:
    """(APD in degrees, AED as a fraction of the inter-ocular distance) of two (478, 3) landmark sets."""
    a, b = np.asarray(output, np.float64)[MESH], np.asarray(driving, np.float64)[MESH]
    scale, rot, t = umeyama(a, b)
    angle = float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1.0, 1.0))))
    aligned = scale * a @ rot.T + t
    iod = float(np.linalg.norm(np.asarray(driving)[468, :3] - np.asarray(driving)[473, :3]))
    return angle, float(np.linalg.norm(aligned - b, axis=-1).mean() / max(iod, 1e-8))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-8))
