"""5-point similarity alignment to the ArcFace template (the input convention of face-recognition nets)."""
from __future__ import annotations

import numpy as np

# ArcFace's 112x112 template: subject's right eye, left eye, nose tip, right and left mouth corners.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
# The same five points on the MediaPipe mesh (iris centres, nose tip, mouth corners), in image order.
FIVE_POINT_IDS = [468, 473, 1, 61, 291]


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """(5, 2) eye centres, nose tip and mouth corners from (478, >=2) landmarks."""
    return np.asarray(landmarks)[FIVE_POINT_IDS, :2].astype(np.float64)


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(scale, rotation (D, D), translation (D,)) minimising |dst - (s R src + t)|^2 for (N, D) points."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.eye(src.shape[1])
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1, -1] = -1
    rot = u @ sign @ vt
    scale = float((sig * np.diag(sign)).sum() / max((s**2).sum() / len(src), 1e-12))
    return scale, rot, mu_d - scale * rot @ mu_s


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares similarity (rotation, uniform scale, translation) taking 2-D src onto dst."""
    scale, rot, t = umeyama(src, dst)
    return np.hstack([scale * rot, t[:, None]])


def alignment_matrix(landmarks_norm: np.ndarray) -> np.ndarray:
    """(2, 3) similarity from crop-normalised coordinates ([0, 1]) to the normalised ArcFace template
    (template / 112): resolution-independent, so it holds for the 256 and 512 crops alike."""
    return similarity_transform(five_points(landmarks_norm), ARCFACE_112 / 112.0).astype(np.float32)


def aligned_face(rgb: np.ndarray, landmarks_norm: np.ndarray, size: int = 112) -> np.ndarray:
    """The size x size ArcFace-aligned face of an image whose landmarks are given normalised."""
    import cv2

    h, w = rgb.shape[:2]
    pts = five_points(landmarks_norm) * [w, h]
    m = similarity_transform(pts, ARCFACE_112 * size / 112.0)
    return cv2.warpAffine(rgb, m, (size, size), borderMode=cv2.BORDER_REFLECT)
