"""Whether an animation moves with its driver (src/metrics/motion.py, benchmarks/eval_motion.py) on a real fixture
clip: a clip against itself moves and mouths exactly as its driver; a frozen frame does neither."""
from __future__ import annotations

import json

import numpy as np

from benchmarks import eval_motion
from src.metrics.motion import follows_driver
from src.video_io import iter_frames, write_video
from tests.conftest import FIXTURES


def test_a_clip_follows_itself_and_a_still_frame_does_not(tmp_path, monkeypatch):
    clip = sorted((FIXTURES / "voxceleb2_mini" / "test" / "mp4").glob("*/*/*.mp4"))[0]
    frames = [f for _, f in zip(range(40), iter_frames(clip))]
    driving, still = tmp_path / "driving.mp4", tmp_path / "still.mp4"
    write_video(driving, frames)
    write_video(still, [frames[0]] * len(frames))
    same = follows_driver(driving, driving)
    assert same["frames"] == 40 and same["frames_with_a_face_in_both"] == 40
    assert same["frame_change"]["ratio"] == 1.0 and same["frame_change"]["driving"] > 0.1
    assert same["mouth_opening_correlation"] == 1.0
    frozen = follows_driver(still, driving)
    assert frozen["frame_change"]["output"] < 0.05 * frozen["frame_change"]["driving"]
    assert frozen["mouth_opening_correlation"] is None or abs(frozen["mouth_opening_correlation"]) < 0.6
    # the benchmark reads both paths from a demo summary and saves the result
    monkeypatch.setattr(eval_motion, "save", lambda name, r: (tmp_path / f"{name}.json").write_text(json.dumps(r)))
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"animate": {"output": str(driving), "driving": str(driving)}}))
    eval_motion.main(["--summary", str(summary)])
    saved = json.loads((tmp_path / "demo_motion.json").read_text())
    assert saved["mouth_opening_correlation"] == 1.0 and np.isclose(saved["frame_change"]["ratio"], 1.0)
