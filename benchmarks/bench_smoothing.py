"""Driving-landmark smoothing (src/faces/smoothing.py) on the real fixture clips, as src.animate detects them
(prepare_driving: face crop at 256, MediaPipe per frame): jitter (mean acceleration of the nose-bridge points
over still stretches, px/frame^2) before and after, and how far smoothing moves the landmarks from the raw
detections (mean px over the 478 points, the AKD between the two), per Savitzky-Golay window.

Then what the pixels show: `src.animate` drives a fixture portrait with the first 96 frames of 6 of the clips
(every fourth), raw and smoothed, through an untrained `demo`-size generator (128 px, mesh prior: it warps
along the mesh, the geometry every generator on the prior starts from), and MediaPipe measures the output
frames the way it measured the driving clip (tracking mode, upscaled to 256): the jitter one would see.
"""
from __future__ import annotations

import numpy as np

from benchmarks.common import FIXTURES, save

WINDOWS = (5, 7, 9, 13)
SIZE = 256
GENERATED_CLIPS, GENERATED_FRAMES, GENERATED_WINDOWS = 6, 96, (9, 13)


def output_jitter(video) -> float:
    """Jitter of the face in a generated video, measured as the driving video was (MediaPipe tracking mode)."""
    import cv2

    from src.faces.landmarks import FaceMesh
    from src.faces.smoothing import jitter
    from src.video_io import read_frames

    with FaceMesh(static=False) as mesh:
        found = [mesh(cv2.resize(f, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)) for f in read_frames(video)]
    return jitter(np.stack([f[0] for f in found if f]), SIZE)


def generated_face_jitter(clips) -> dict:
    """Output-frame jitter of `src.animate` raw and with each of GENERATED_WINDOWS, per clip and on the mean."""
    import tempfile
    from pathlib import Path

    from benchmarks.common import untrained_generator
    from src.inference import animate
    from src.video_io import read_frames, write_video

    tmp = Path(tempfile.mkdtemp(prefix="bench_smoothing_"))
    generator = untrained_generator(tmp / "demo.ckpt", ["model=demo"])
    portrait = FIXTURES / "portraits" / "portrait_a.jpg"
    per_clip = {"raw": [], **{f"window_{w}": [] for w in GENERATED_WINDOWS}}
    for i, clip in enumerate(clips):
        driving = write_video(tmp / f"driving_{i}.mp4", read_frames(clip)[:GENERATED_FRAMES], fps=25)
        for w in (None, *GENERATED_WINDOWS):
            out = animate(generator, portrait, driving, tmp / "out.mp4", overwrite=True, progress=False, smooth=w)
            per_clip["raw" if w is None else f"window_{w}"].append(round(output_jitter(out["output"]), 4))
    summary = {k: round(float(np.mean(v)), 4) for k, v in per_clip.items()}
    for w in GENERATED_WINDOWS:
        summary[f"window_{w}_ratio"] = round(summary[f"window_{w}"] / summary["raw"], 3)
        lower = sum(s < r for s, r in zip(per_clip[f"window_{w}"], per_clip["raw"]))
        summary[f"window_{w}_lower_on_clips"] = f"{lower}/{len(clips)}"
    return {**summary, "per_clip": per_clip, "clips": len(clips), "frames_per_clip": GENERATED_FRAMES,
            "generator": "untrained demo preset, 128 px, mesh prior"}


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
    result["generated_face_jitter_px"] = generated_face_jitter(clips[::len(clips) // GENERATED_CLIPS][:GENERATED_CLIPS])
    save("smoothing", result)


if __name__ == "__main__":
    main()
