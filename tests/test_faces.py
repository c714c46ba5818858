"""Mesh topology, piecewise-affine warping and real MediaPipe landmarks on a real portrait."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from src.faces import topology as topo
from src.faces.detect import detect_faces
from src.faces.landmarks import FaceMesh, to_pixels
from src.faces.piecewise_affine import PiecewiseAffineWarper


def test_topology():
    tris = topo.tessellation_triangles()
    assert tris.shape == (852, 3) and tris.max() == 467
    assert len(set(map(tuple, tris))) == 852
    oval = topo.face_oval()
    assert len(oval) == 36 and topo.CHIN in oval and topo.FOREHEAD in oval


def _grid_mesh(h, w, n=6):
    xs, ys = np.meshgrid(np.linspace(0, w - 1, n), np.linspace(0, h - 1, n))
    pts = np.stack([xs.ravel(), ys.ravel()], 1)
    tris = []
    for r in range(n - 1):
        for c in range(n - 1):
            i = r * n + c
            tris += [(i, i + 1, i + n), (i + 1, i + n + 1, i + n)]
    return pts, np.array(tris, np.int32)


def test_identity_and_translation_warps():
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), (0, 0), 3)
    pts, tris = _grid_mesh(120, 160)
    warper = PiecewiseAffineWarper(120, 160)
    same = warper.warp(img, pts, pts, tris)
    assert np.abs(same.astype(int) - img.astype(int)).max() <= 1
    # moving every point 5 px right shifts the picture 5 px right
    moved = warper.warp(img, pts, pts + [5.0, 0.0], tris)
    assert np.abs(moved[:, 10:-10].astype(int) - img[:, 5:-15].astype(int)).mean() < 1.0


def test_real_portrait_landmarks(fixtures_dir):
    bgr = cv2.imread(str(sorted((fixtures_dir / "portraits").glob("*.jpg"))[0]))
    rgb = bgr[:, :, ::-1].copy()
    boxes = detect_faces(rgb)
    assert boxes, "dlib finds the face in a real portrait"
    with FaceMesh(static=True) as mesh:
        faces = mesh(rgb)
    assert len(faces) == 1 and faces[0].shape == (478, 3)
    lm = to_pixels(faces[0], *rgb.shape[:2])
    # the nose tip lies inside the detected face box
    b = boxes[0]
    assert b.left < lm[1, 0] < b.right and b.top < lm[1, 1] < b.bottom


def test_smoothing_keeps_smooth_motion_and_removes_tremble():
    from src.faces.smoothing import jitter, smooth_landmarks

    t = np.arange(40, dtype=np.float64)[:, None, None]
    motion = 0.3 + 0.002 * t + 0.0001 * t**2 + np.zeros((1, 478, 3))  # a head moving with constant acceleration
    np.testing.assert_allclose(smooth_landmarks(motion, 9), motion, atol=1e-6)  # quadratic motion: untouched
    trembling = motion + np.random.default_rng(0).normal(0, 0.002, motion.shape)
    assert jitter(smooth_landmarks(trembling, 9), 256) < 0.5 * jitter(trembling, 256)
    assert np.array_equal(smooth_landmarks(trembling[:3], 9), trembling[:3].astype(np.float32))  # too short
    with pytest.raises(ValueError, match="odd"):
        smooth_landmarks(trembling, 4)
