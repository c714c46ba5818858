"""Temporal warping error: how much consecutive frames disagree after motion compensation.

For each pair (t, t+1), a classical optical flow (OpenCV DIS, no downloaded weights) is estimated on the
frames themselves, frame t+1 is warped back onto frame t, and the mean absolute difference is taken over
pixels whose forward-backward flow is consistent (occlusions and flow failures excluded). Flicker raises it;
it is compared against the same measure on the ground-truth frames (motion that really happens also
leaves some residual).
"""
from __future__ import annotations

import cv2
import numpy as np


def _flow(dis, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return dis.calc(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)


def _warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(img, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def warping_error(frames: np.ndarray, consistency: float = 1.0) -> float:
    """Mean over consecutive pairs of |frame_t - warp(frame_{t+1})| in [0, 1] units, on flow-consistent
    pixels. frames: (T, H, W, 3) uint8 RGB, T >= 2."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) < 2 or frames.dtype != np.uint8:
        raise ValueError(f"warping_error needs (T>=2, H, W, 3) uint8 frames, got {frames.dtype} {frames.shape}")
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    errors = []
    for a, b in zip(frames[:-1], frames[1:]):
        fwd, bwd = _flow(dis, a, b), _flow(dis, b, a)
        # a pixel is trusted when going t -> t+1 -> t returns to where it started
        round_trip = fwd + _warp(bwd, fwd)
        mask = (np.linalg.norm(round_trip, axis=-1) < consistency).astype(np.float32)
        diff = np.abs(a.astype(np.float32) - _warp(b, fwd).astype(np.float32)).mean(-1) / 255.0
        errors.append(float((diff * mask).sum() / max(mask.sum(), 1.0)))
    return float(np.mean(errors))
