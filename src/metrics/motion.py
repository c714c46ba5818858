"""Does an animation move with its driving clip? Two measures, on both videos' frames resized to 256 and compared
over the frames they share:
- the mean frame-to-frame change (mean absolute difference of consecutive frames, of 255) of each, and their
  ratio: a frozen face is 0, one that moves as much as its driver 1;
- the mouth: MediaPipe FaceMesh (video mode) on both, the inner-lip gap over the inter-ocular distance per frame,
  and the correlation of the two series over the frames with a face in both (None if either mouth never moves).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 256


def frames_at(path: Path, size: int = SIZE) -> np.ndarray:
    import cv2

    from src.video_io import iter_frames

    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in iter_frames(path)])


def frame_change(frames: np.ndarray) -> float:
    """Mean absolute difference of consecutive frames, in units of 255."""
    return float(np.abs(np.diff(frames.astype(np.float32), axis=0)).mean())


def mouth_series(frames: np.ndarray) -> np.ndarray:
    """Mouth opening per frame (NaN where MediaPipe finds no face)."""
    from src.faces.landmarks import FaceMesh
    from src.faces.motion import mouth_opening

    out = np.full(len(frames), np.nan)
    with FaceMesh(static=False) as mesh:
        for i, f in enumerate(frames):
            faces = mesh(f)
            if faces:
                out[i] = mouth_opening(faces[0])
    return out


def follows_driver(output: Path, driving: Path) -> dict:
    """Both measures of `output` against `driving` (video files)."""
    out, drv = frames_at(output), frames_at(driving)
    n = min(len(out), len(drv))
    out, drv = out[:n], drv[:n]
    m_out, m_drv = mouth_series(out), mouth_series(drv)
    both = ~np.isnan(m_out) & ~np.isnan(m_drv)
    moving = both.sum() > 2 and m_out[both].std() > 0 and m_drv[both].std() > 0
    corr = float(np.corrcoef(m_out[both], m_drv[both])[0, 1]) if moving else None
    change_out, change_drv = frame_change(out), frame_change(drv)
    return {"frames": n,
            "frame_change": {"output": round(change_out, 3), "driving": round(change_drv, 3),
                             "ratio": round(change_out / max(change_drv, 1e-9), 3)},
            "mouth_opening_correlation": None if corr is None else round(corr, 3),
            "frames_with_a_face_in_both": int(both.sum())}
