"""Temporal smoothing of driving landmarks, and the jitter it is judged by.

MediaPipe's landmarks tremble by a fraction of a pixel from frame to frame even on a still face, and the
generator turns that tremble into a shimmering face. A Savitzky-Golay filter (scipy) fits a quadratic to each
landmark coordinate over a window of frames centred on each frame: noise averages out, while motion that
is locally smooth (a head turn, a mouth opening over a few frames) keeps its timing and amplitude, which a
moving average would flatten. It is centred (non-causal), which suits files: the whole clip is known.
"""
from __future__ import annotations

import numpy as np

# points on the nose bridge and the tip: they move only with the head, never with an expression
STATIC_POINTS = (6, 168, 197, 195, 5, 4)
POLY_ORDER = 2
POINTS_AT_ONCE = 16


def smooth_landmarks(landmarks: np.ndarray, window: int) -> np.ndarray:
    """(T, N, 3) landmarks smoothed over time with a Savitzky-Golay filter of `window` frames (odd, >= 3;
    shortened to the clip when it is longer). A clip shorter than 4 frames is returned unchanged."""
    from scipy.signal import savgol_filter

    lm = np.asarray(landmarks)
    if window < 3 or window % 2 == 0:
        raise ValueError(f"the smoothing window must be an odd number of frames >= 3, not {window}")
    window = min(window, len(lm) if len(lm) % 2 else len(lm) - 1)
    if window <= POLY_ORDER + 1:
        return lm.astype(np.float32)
    # each point is filtered on its own, so a few points at a time: the float64 work arrays stay small however
    # long the video (the whole clip at once held 5x its landmarks)
    out = np.empty(lm.shape, np.float32)
    for i in range(0, lm.shape[1], POINTS_AT_ONCE):
        out[:, i : i + POINTS_AT_ONCE] = savgol_filter(np.asarray(lm[:, i : i + POINTS_AT_ONCE], np.float64), window,
                                                       POLY_ORDER, axis=0, mode="interp")
    return out


def jitter(landmarks: np.ndarray, size: int, points=STATIC_POINTS) -> float:
    """Mean acceleration (pixels / frame^2 at crop size `size`) of the static `points` over the still stretches
    of a clip: frames whose nose-bridge speed is at most its median. High-frequency tremble, not motion."""
    p = np.asarray(landmarks)[:, list(points), :2].astype(np.float64) * size
    if len(p) < 3:
        return 0.0
    speed = np.linalg.norm(np.diff(p.mean(1), axis=0), axis=-1)             # (T-1,)
    accel = np.linalg.norm(np.diff(p, n=2, axis=0), axis=-1).mean(1)        # (T-2,), per frame t=1..T-2
    still = np.maximum(speed[:-1], speed[1:]) <= np.median(speed)          # both neighbouring steps slow
    return float(accel[still].mean()) if still.any() else float(accel.mean())
