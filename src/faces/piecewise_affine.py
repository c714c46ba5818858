"""Piecewise-affine image warping along a triangle mesh, fast enough for video on a CPU.

Each destination triangle gets the affine map back to its source triangle. Triangle ids are rasterised
at reduced resolution in painter's order (later triangles cover earlier ones, which handles folds from
head rotation); the backward map is evaluated there and its displacement upsampled. A piecewise-affine map is continuous
across shared edges, so linear upsampling of the displacement is nearly exact (and exact for identity
and translation, also at the image border); cv2.remap does the sampling.
"""
from __future__ import annotations

import cv2
import numpy as np


def triangle_affines(src: np.ndarray, dst: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(T, 2, 3) affine maps taking each dst triangle onto its src triangle."""
    d = np.concatenate([dst[triangles], np.ones((len(triangles), 3, 1))], axis=2)  # (T, 3, 3) rows = vertices
    s = src[triangles]  # (T, 3, 2)
    det = np.linalg.det(d)
    ok = np.abs(det) > 1e-6
    affines = np.zeros((len(triangles), 2, 3))
    affines[:, 0, 0] = affines[:, 1, 1] = 1.0  # degenerate triangles fall back to identity
    # Solve d @ M = s for M (3x2); the affine is M^T.
    affines[ok] = np.linalg.solve(d[ok], s[ok]).transpose(0, 2, 1)
    return affines


class PiecewiseAffineWarper:
    """Warp images of size (height, width) so that `src` points move to `dst` points."""

    def __init__(self, height: int, width: int, map_scale: float = 0.25):
        self.height, self.width = height, width
        self.scale = map_scale
        self.low_h = max(2, int(round(height * map_scale)))
        self.low_w = max(2, int(round(width * map_scale)))
        ys, xs = np.mgrid[0 : self.low_h, 0 : self.low_w].astype(np.float64)
        # low-res pixel centres expressed in full-resolution pixel coordinates
        self.grid_x = (xs + 0.5) * width / self.low_w - 0.5
        self.grid_y = (ys + 0.5) * height / self.low_h - 0.5
        self.full_y, self.full_x = np.mgrid[0:height, 0:width].astype(np.float32)

    def backward_map(self, src: np.ndarray, dst: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Full-resolution float32 maps (map_x, map_y) for cv2.remap. Pixels no triangle covers map to
        themselves. Triangles are rasterised in the given order; later ones win."""
        ids = np.full((self.low_h, self.low_w), -1, dtype=np.int32)
        sx, sy = self.low_w / self.width, self.low_h / self.height
        low_dst = np.empty_like(dst)
        low_dst[:, 0] = (dst[:, 0] + 0.5) * sx - 0.5
        low_dst[:, 1] = (dst[:, 1] + 0.5) * sy - 0.5
        # fillPoly with 4 fractional bits: sub-pixel accurate edges on the small raster
        pts = np.round(low_dst[triangles] * 16).astype(np.int32)
        for i, tri in enumerate(pts):
            cv2.fillConvexPoly(ids, tri, int(i), lineType=cv2.LINE_8, shift=4)
        affines = triangle_affines(src, dst, triangles)
        covered = ids >= 0
        a = affines[np.where(covered, ids, 0)]  # (h, w, 2, 3)
        map_x = a[..., 0, 0] * self.grid_x + a[..., 0, 1] * self.grid_y + a[..., 0, 2]
        map_y = a[..., 1, 0] * self.grid_x + a[..., 1, 1] * self.grid_y + a[..., 1, 2]
        dx = np.where(covered, map_x - self.grid_x, 0.0).astype(np.float32)
        dy = np.where(covered, map_y - self.grid_y, 0.0).astype(np.float32)
        size = (self.width, self.height)
        return (cv2.resize(dx, size, interpolation=cv2.INTER_LINEAR) + self.full_x,
                cv2.resize(dy, size, interpolation=cv2.INTER_LINEAR) + self.full_y)

    def warp(self, image: np.ndarray, src: np.ndarray, dst: np.ndarray, triangles: np.ndarray) -> np.ndarray:
        map_x, map_y = self.backward_map(src, dst, triangles)
        return cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
