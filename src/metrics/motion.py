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


def follows_driver(output: Path, driving: Path, size: int = SIZE) -> dict:
    """Both measures of `output` against `driving` (video files), streamed: one frame of each in memory at a time."""
    import cv2

    from src.faces.landmarks import FaceMesh
    from src.faces.motion import mouth_opening
    from src.video_io import iter_frames

    def mouth(mesh: FaceMesh, frame: np.ndarray) -> float:
        faces = mesh(frame)
        return float(mouth_opening(faces[0])) if faces else np.nan

    change, mouths, previous = np.zeros(2), [], None
    with FaceMesh(static=False) as mesh_out, FaceMesh(static=False) as mesh_drv:  # each tracks its own video
        for pair in zip(iter_frames(output), iter_frames(driving)):
            frames = [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in pair]
            if previous is not None:
                change += [np.abs(f.astype(np.float32) - p.astype(np.float32)).mean() for f, p in zip(frames, previous)]
            mouths.append((mouth(mesh_out, frames[0]), mouth(mesh_drv, frames[1])))
            previous = frames
    n = len(mouths)
    m_out, m_drv = np.array(mouths).reshape(-1, 2).T
    both = ~np.isnan(m_out) & ~np.isnan(m_drv)
    moving = both.sum() > 2 and m_out[both].std() > 0 and m_drv[both].std() > 0  # a still mouth has no correlation
    corr = float(np.corrcoef(m_out[both], m_drv[both])[0, 1]) if moving else None
    change_out, change_drv = change / max(n - 1, 1)
    return {"frames": n,
            "frame_change": {"output": round(float(change_out), 3), "driving": round(float(change_drv), 3),
                             "ratio": round(float(change_out / max(change_drv, 1e-9)), 3)},
            "mouth_opening_correlation": None if corr is None else round(corr, 3),
            "frames_with_a_face_in_both": int(both.sum())}
