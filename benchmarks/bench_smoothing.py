"""Driving-landmark smoothing (src/faces/smoothing.py) on the real fixture clips, as src.animate detects them
(prepare_driving: face crop at 256, MediaPipe per frame): jitter (mean acceleration of the nose-bridge points
over still stretches, px/frame^2) before and after, and how far smoothing moves the landmarks from the raw
detections (mean px over the 478 points, the AKD between the two), per Savitzky-Golay window.

Then what the pixels show: a fixture portrait warped along the mesh (the piecewise-affine baseline, which is
the geometry a generator on the mesh prior starts from) by each test clip's first 64 frames, relative motion,
and MediaPipe run again on the warped frames: the jitter of the face one would see.
"""
from __future__ import annotations

import numpy as np

from benchmarks.common import FIXTURES, save

WINDOWS = (5, 7, 9, 13)
SIZE = 256


def main() -> None:
    from src.faces.smoothing import jitter, smooth_landmarks
    from src.inference import prepare_driving

    clips = sorted((FIXTURES / "voxceleb2_mini").glob("*/mp4/*/*/*.mp4"))
    raw = [prepare_driving(c, SIZE).landmarks for c in clips]
    result = {"command": "python -m benchmarks.bench_smoothing", "clips": len(clips),
              "frames": int(sum(len(r) for r in raw)), "jitter_raw_px": round(float(np.mean([jitter(r, SIZE)
                                                                                        for r in raw])), 4)}
    for w in WINDOWS:
        smooth = [smooth_landmarks(r, w) for r in raw]
        j = np.mean([jitter(s, SIZE) for s in smooth])
        moved = np.mean([np.linalg.norm((s - r)[..., :2] * SIZE, axis=-1).mean() for s, r in zip(smooth, raw)])
        result[f"window_{w}"] = {"jitter_px": round(float(j), 4),
                                 "jitter_ratio": round(float(j / result["jitter_raw_px"]), 3),
                                 "akd_to_raw_px": round(float(moved), 3)}
    from src.evaluation import piecewise_affine
    from src.faces.landmarks import FaceMesh
    from src.faces.motion import transfer_motion
    from src.inference import identity_embedder, prepare_source

    source = prepare_source(FIXTURES / "portraits" / "portrait_a.jpg", SIZE, identity_embedder("dlib", 128))
    tests = [r[:64] for c, r in zip(clips, raw) if c.parts[-5] == "test"]
    seen = {}
    with FaceMesh(static=True) as mesh:
        for w in (None, *WINDOWS):
            scores = []
            for lm in tests:
                driven = transfer_motion(source.landmarks, smooth_landmarks(lm, w) if w else lm, "relative")
                found = [mesh(np.ascontiguousarray(f)) for f in piecewise_affine(source.crop, source.landmarks, driven)]
                scores.append(jitter(np.stack([f[0] for f in found if f]), SIZE))
            seen["raw" if w is None else f"window_{w}"] = round(float(np.mean(scores)), 4)
    result["warped_face_jitter_px"] = {**seen, "clips": len(tests), "frames_per_clip": 64}
    save("smoothing", result)


if __name__ == "__main__":
    main()
