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

Pose and expression. The driver's motion d_t - d_0 splits exactly into its head pose and its expression:
P_t, the similarity that takes d_0 onto d_t on points that move only with the skull (RIGID), and L_t its linear
part, give

    d_t - d_0 = (P_t(d_0) - d_0)  +  L_t (P_t^-1(d_t) - d_0)
                 head pose            expression, measured in the first frame's pose, carried by the current one

`parts` keeps either term or both and `expression_scale` multiplies the second (0: no expression change, so
the source keeps its own, or in absolute mode the first driving frame's; 1: as driven; 2: exaggerated). With
both parts at scale 1 the sum is the motion above, exactly.
"""
from __future__ import annotations

import numpy as np

from src.faces.align import similarity_transform

MODES = ("relative", "absolute")
PARTS = ("both", "pose", "expression")
MESH = slice(0, 468)  # the face mesh without the iris points (irises move with gaze, not with the head)
# forehead, nose bridge and tip, eye corners, temples and cheek sides: they move with the skull, not with the
# mouth, the jaw or the brows, so the pose fitted on them is not pulled by an expression
RIGID = [10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 33, 133, 362, 263, 127, 356, 234, 454]


def transfer_motion(source: np.ndarray, driving: np.ndarray, mode: str = "relative", parts: str = "both",
                    expression_scale: float = 1.0) -> np.ndarray:
    """source (478, 3) and driving (T, 478, 3) landmarks, normalised to their crops -> (T, 478, 3)."""
    if mode not in MODES:
        raise ValueError(f"motion must be one of {', '.join(MODES)}, got '{mode}'")
    if parts not in PARTS:
        raise ValueError(f"motion parts must be one of {', '.join(PARTS)}, got '{parts}'")
    driving = np.asarray(driving, np.float64)
    delta = driving - driving[:1]
    if parts != "both" or expression_scale != 1.0:
        pose, expression = split_motion(driving)
        delta = (pose if parts != "expression" else 0) + (expression_scale * expression if parts != "pose" else 0)
    if mode == "absolute":
        return (driving[:1] + delta).astype(np.float32)
    source = np.asarray(source, np.float64)
    s = similarity_transform(driving[0, MESH, :2], source[MESH, :2])
    linear = s[:, :2]
    scale = float(np.sqrt(abs(np.linalg.det(linear))))
    out = np.empty_like(driving)
    out[..., :2] = source[None, :, :2] + delta[..., :2] @ linear.T
    out[..., 2] = source[None, :, 2] + scale * delta[..., 2]
    return out.astype(np.float32)


def split_motion(driving: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pose, expression), each (T, 478, 3), of (T, 478, 3) driving landmarks: the two terms of the module's
    docstring, which add up to driving - driving[0]. z follows the pose's scale."""
    d = np.asarray(driving, np.float64)
    d0 = d[0]
    pose, expression = np.empty_like(d), np.empty_like(d)
    for t, dt in enumerate(d):
        p = similarity_transform(d0[RIGID, :2], dt[RIGID, :2])  # d_0 -> d_t
        lin, shift = p[:, :2], p[:, 2]
        scale = float(np.sqrt(abs(np.linalg.det(lin))))
        posed = d0[:, :2] @ lin.T + shift                          # P_t(d_0)
        pose[t, :, :2] = posed - d0[:, :2]
        pose[t, :, 2] = (scale - 1.0) * d0[:, 2]
        back = (dt[:, :2] - shift) @ np.linalg.inv(lin).T         # P_t^-1(d_t)
        expression[t, :, :2] = (back - d0[:, :2]) @ lin.T         # L_t (P_t^-1(d_t) - d_0)
        expression[t, :, 2] = dt[:, 2] - scale * d0[:, 2]
    return pose, expression


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Gap between the inner lips (13 upper, 14 lower) over the inter-ocular distance, of (..., 478, >=2)."""
    lm = np.asarray(landmarks)
    return np.linalg.norm(lm[..., 13, :2] - lm[..., 14, :2], axis=-1) / inter_ocular(lm)


def inter_ocular(landmarks: np.ndarray) -> np.ndarray:
    """Distance between the iris centres (468, 473) of (..., 478, >=2) landmarks."""
    lm = np.asarray(landmarks)
    return np.linalg.norm(lm[..., 468, :2] - lm[..., 473, :2], axis=-1)
