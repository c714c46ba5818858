"""Synthetic talking-head motion on a real face photo.

A smooth motion script (head yaw/pitch/roll, a little translation, jaw opening for speech-like syllables,
blinks) moves the photo's MediaPipe landmarks; each frame is rendered by warping the photo's mesh
triangles to the moved landmarks (piecewise affine on the FaceMesh tessellation). Two rings of points
around the face and fixed points on the frame border carry the hair, neck and background along smoothly.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import Delaunay

from src.faces import topology as topo
from src.faces.piecewise_affine import PiecewiseAffineWarper

MAX_YAW, MAX_PITCH, MAX_ROLL = 15.0, 12.0, 8.0  # degrees


@dataclass
class MotionScript:
    """Per-frame motion parameters; angles in degrees, translation in fractions of the frame size,
    jaw and blink in [0, 1]."""

    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    jaw: np.ndarray
    blink: np.ndarray

    def __len__(self) -> int:
        return len(self.yaw)

    def to_json(self) -> dict:
        return {k: np.round(getattr(self, k), 4).tolist() for k in self.__dataclass_fields__}


def _smooth_signal(rng: np.random.Generator, t: np.ndarray, max_abs: float) -> np.ndarray:
    """A sum of three slow sinusoids (0.1-0.6 Hz), scaled so that its peak is in [0.5, 1] * max_abs."""
    s = np.zeros_like(t)
    for _ in range(3):
        s += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * rng.uniform(0.1, 0.6) * t + rng.uniform(0, 2 * np.pi))
    return s / (np.abs(s).max() + 1e-8) * rng.uniform(0.5, 1.0) * max_abs


def make_motion_script(rng: np.random.Generator, num_frames: int, fps: float) -> MotionScript:
    t = np.arange(num_frames) / fps
    # Speech: syllables at 3-5 Hz, gated by phrases with pauses, smoothed.
    syllables = np.clip(np.sin(2 * np.pi * rng.uniform(3.0, 5.0) * t + rng.uniform(0, 2 * np.pi)), 0, None) ** 1.5
    gate = (np.sin(2 * np.pi * rng.uniform(0.3, 0.6) * t + rng.uniform(0, 2 * np.pi)) > -0.3).astype(np.float64)
    gate = np.convolve(gate, np.ones(5) / 5, mode="same")
    jaw = np.clip(syllables * gate * rng.uniform(0.6, 1.0), 0, 1)
    # Blinks every 1.2-3 s, each a 5-frame close/open.
    blink = np.zeros(num_frames)
    at = rng.uniform(0.2, 1.5)
    profile = np.array([0.4, 0.9, 1.0, 0.7, 0.3])
    while at * fps < num_frames:
        i = int(at * fps)
        n = min(len(profile), num_frames - i)
        blink[i : i + n] = np.maximum(blink[i : i + n], profile[:n])
        at += rng.uniform(1.2, 3.0)
    return MotionScript(
        yaw=_smooth_signal(rng, t, MAX_YAW),
        pitch=_smooth_signal(rng, t, MAX_PITCH),
        roll=_smooth_signal(rng, t, MAX_ROLL),
        tx=_smooth_signal(rng, t, 0.03),
        ty=_smooth_signal(rng, t, 0.02),
        jaw=jaw,
        blink=blink,
    )


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation in image coordinates (x right, y down, z away from the camera), angles in degrees."""
    y, p, r = np.deg2rad([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


class FaceAnimator:
    """Moves a neutral (478, 3) pixel-space landmark set by a motion script and renders the frames."""

    def __init__(self, image: np.ndarray, landmarks_px: np.ndarray):
        self.image = image
        self.h, self.w = image.shape[:2]
        self.neutral = landmarks_px.astype(np.float64)
        mesh = self.neutral[:468]
        self.center = mesh.mean(axis=0)
        down = self.neutral[topo.CHIN, :2] - self.neutral[topo.FOREHEAD, :2]
        self.face_height = float(np.linalg.norm(down))
        self.down = down / self.face_height
        self.right = np.array([-self.down[1], self.down[0]])
        self.jaw_weights = self._jaw_weights()

        # Rings around the face (follow the head partially) and a fixed frame border.
        oval = self.neutral[topo.face_oval(), :2]
        c2 = self.center[:2]
        lo, hi = np.array([1.0, 1.0]), np.array([self.w - 2.0, self.h - 2.0])
        self.ring1 = np.clip(c2 + 1.35 * (oval - c2), lo, hi)
        self.ring2 = np.clip(c2 + 1.9 * (oval - c2), lo, hi)
        edge = np.linspace(0, 1, 5)[:-1]
        W, H = self.w - 1.0, self.h - 1.0
        self.border = np.concatenate([
            np.stack([edge * W, np.zeros_like(edge)], 1), np.stack([np.full_like(edge, W), edge * H], 1),
            np.stack([(1 - edge) * W, np.full_like(edge, H)], 1), np.stack([np.zeros_like(edge), (1 - edge) * H], 1),
        ])
        self.src_points = self._all_points(self.neutral)
        # Delaunay underlay: fills the mesh's holes (eyes, mouth) and everything outside the face.
        self.underlay = Delaunay(self.src_points).simplices.astype(np.int32)
        self.tess = topo.tessellation_triangles()
        self.warper = PiecewiseAffineWarper(self.h, self.w, map_scale=0.25)

    def _jaw_weights(self) -> np.ndarray:
        """How much each landmark follows the jaw: 0 above the mouth line, 1 from the lower lip down,
        falling off towards the sides of the face."""
        mouth = self.neutral[list(topo.MOUTH_CORNERS), :2].mean(axis=0)
        rel = self.neutral[:, :2] - mouth
        d = rel @ self.down
        d_ref = (self.neutral[17, :2] - mouth) @ self.down
        x = np.clip(d / max(d_ref, 1e-3), 0, 1)
        w = x * x * (3 - 2 * x)
        w[topo.LOWER_LIP_INNER] = np.maximum(w[topo.LOWER_LIP_INNER], 0.85)
        lateral = (rel @ self.right) / (0.45 * self.face_height)
        return w * np.exp(-(lateral**2))

    def _all_points(self, lm: np.ndarray) -> np.ndarray:
        """2-D control points: landmarks, ring1, ring2 (moved with lm's face oval), border."""
        disp = lm[topo.face_oval(), :2] - self.neutral[topo.face_oval(), :2]
        return np.concatenate([lm[:, :2], self.ring1 + 0.6 * disp, self.ring2 + 0.2 * disp, self.border])

    def landmarks_at(self, m: MotionScript, i: int) -> np.ndarray:
        """(478, 3) pixel-space landmarks of frame i."""
        lm = self.neutral.copy()
        lm[:, :2] += np.outer(self.jaw_weights * m.jaw[i] * 0.12 * self.face_height, self.down)
        b = m.blink[i]
        if b > 0:
            for upper, lower, iris in ((topo.RIGHT_EYE_UPPER, topo.RIGHT_EYE_LOWER, topo.RIGHT_IRIS),
                                       (topo.LEFT_EYE_UPPER, topo.LEFT_EYE_LOWER, topo.LEFT_IRIS)):
                lm[upper] += 0.9 * b * (lm[lower] - lm[upper])
                lid = lm[lower, :2].mean(axis=0)
                lm[iris, :2] += 0.8 * b * np.outer((lid - lm[iris, :2]) @ self.down, self.down)
        rot = rotation_matrix(m.yaw[i], m.pitch[i], m.roll[i])
        lm = (lm - self.center) @ rot.T + self.center
        lm[:, 0] += m.tx[i] * self.w
        lm[:, 1] += m.ty[i] * self.h
        return lm

    def render(self, m: MotionScript, i: int) -> np.ndarray:
        lm = self.landmarks_at(m, i)
        dst = self._all_points(lm)
        # painter's order: the underlay first, then mesh triangles from far (large z) to near
        depth = lm[self.tess, 2].mean(axis=1)
        triangles = np.concatenate([self.underlay, self.tess[np.argsort(-depth)]])
        frame = self.warper.warp(self.image, self.src_points, dst, triangles)
        if m.jaw[i] > 0.05:
            frame = self._darken_mouth(frame, lm, m.jaw[i])
        return frame

    def _darken_mouth(self, frame: np.ndarray, lm: np.ndarray, jaw: float) -> np.ndarray:
        """The photo has a closed mouth; an opened one shows the dark oral cavity."""
        mask = np.zeros(frame.shape[:2], np.float32)
        cv2.fillPoly(mask, [np.round(lm[topo.LIPS_INNER, :2] * 4).astype(np.int32)], 1.0, cv2.LINE_AA, shift=2)
        mask = cv2.GaussianBlur(mask, (0, 0), 1.0)[..., None] * min(0.9, jaw * 2.5)
        cavity = np.array([70, 25, 30], np.float32)
        return (frame * (1 - mask) + cavity * mask).astype(np.uint8)


def speech_audio(jaw: np.ndarray, fps: float, sample_rate: int, f0: float, rng: np.random.Generator) -> np.ndarray:
    """A voiced buzz (harmonics of f0 with a slow vibrato) whose loudness follows the jaw opening:
    the clip gets an audio track that is in sync with its mouth."""
    n = int(round(len(jaw) / fps * sample_rate))
    t = np.arange(n) / sample_rate
    env = np.interp(t, np.arange(len(jaw)) / fps, jaw)
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 9))
    audio = 0.25 * env * voice / 2.0 + 0.003 * rng.standard_normal(n)
    return np.clip(audio, -1, 1).astype(np.float32)
