"""The embedded sample dataset: real mp4s in VoxCeleb2's layout, motion that MediaPipe sees, determinism."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from src.faces.landmarks import FaceMesh, to_pixels
from src.sample_dataset import META_NAME, build
from src.video_io import probe, read_audio, read_frames
from tests.conftest import REPO


def _clips(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/mp4/*/*/*.mp4") if not p.name.startswith("."))


def _md5s(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in _clips(root)}


def test_layout_and_metadata(small_sample, small_sample_settings):
    meta = json.loads((small_sample / META_NAME).read_text())
    ids = {p.parent.parent.name: p.parts[-5] for p in _clips(small_sample)}
    assert len(ids) == 6 and meta["num_identities"] == 6
    assert sorted(ids.values()).count("test") == 1  # one identity held out
    assert len(_clips(small_sample)) == meta["num_clips"] == 6
    for ident in meta["identities"]:
        assert ident["source"].startswith(("insightface:t1.jpg#face", "skimage:astronaut"))
        for video in ident["videos"]:
            assert len(video["video"]) == 11  # YouTube-style id, as in VoxCeleb2
            for clip in video["clips"]:
                folder = small_sample / ident["split"] / "mp4" / ident["identity"] / video["video"]
                path = folder / f"{clip['clip']}.mp4"
                assert path.is_file()
                assert len(clip["motion"]["yaw"]) == clip["frames"]


def test_clips_decode_with_expected_frames_fps_and_audio(small_sample, small_sample_settings):
    meta = json.loads((small_sample / META_NAME).read_text())
    clips = {
        (i["identity"], v["video"], c["clip"]): c
        for i in meta["identities"] for v in i["videos"] for c in v["clips"]
    }
    for path in _clips(small_sample):
        info = probe(path)
        key = (path.parent.parent.name, path.parent.name, path.stem)
        assert info.fps == pytest.approx(25.0)
        assert (info.width, info.height) == (256, 256)
        frames = read_frames(path)
        assert frames.shape == (clips[key]["frames"], 256, 256, 3) and frames.dtype == np.uint8
        assert 25 <= len(frames) <= 30  # 1.0-1.2 s at 25 fps
        audio, rate = read_audio(path)
        assert rate == 16000 and abs(audio.shape[1] / rate - len(frames) / 25) < 0.15
        # the voice is loud when the mouth is open: per-frame loudness follows the scripted jaw
        jaw = np.asarray(clips[key]["motion"]["jaw"])
        per_frame = rate // 25
        rms = [np.sqrt(np.mean(audio[0, i * per_frame : (i + 1) * per_frame] ** 2)) for i in range(len(jaw))]
        if np.ptp(jaw) > 0.3:
            assert np.corrcoef(rms, jaw)[0, 1] > 0.7


def _measures(landmarks: np.ndarray) -> tuple[float, float]:
    """(yaw proxy, mouth opening) from pixel landmarks, both normalised by the face size."""
    face_w = np.linalg.norm(landmarks[454, :2] - landmarks[234, :2])
    face_h = np.linalg.norm(landmarks[152, :2] - landmarks[10, :2])
    yaw = (landmarks[1, 0] - (landmarks[234, 0] + landmarks[454, 0]) / 2) / face_w
    mouth = np.linalg.norm(landmarks[14, :2] - landmarks[13, :2]) / face_h
    return yaw, mouth


def test_mediapipe_sees_the_scripted_motion(small_sample):
    """Landmarks detected on the decoded frames move, and they follow the motion script: the yaw proxy
    tracks the scripted yaw and the mouth opening tracks the scripted jaw."""
    meta = json.loads((small_sample / META_NAME).read_text())
    ident = meta["identities"][0]
    video, clip = ident["videos"][0]["video"], ident["videos"][0]["clips"][0]
    path = small_sample / ident["split"] / "mp4" / ident["identity"] / video / f"{clip['clip']}.mp4"
    frames = read_frames(path)
    with FaceMesh(static=False) as mesh:
        detected = [mesh(f) for f in frames]
    assert all(len(d) == 1 for d in detected)
    lms = np.stack([to_pixels(d[0], 256, 256) for d in detected])
    assert np.abs(lms[:, :468, :2] - lms[0, :468, :2]).max(axis=(1, 2)).max() > 3.0  # pixels
    yaw, mouth = np.array([_measures(lm) for lm in lms]).T
    motion = clip["motion"]
    assert abs(np.corrcoef(yaw, motion["yaw"])[0, 1]) > 0.8
    if np.ptp(motion["jaw"]) > 0.3:
        assert np.corrcoef(mouth, motion["jaw"])[0, 1] > 0.6


def test_deterministic_resumable_and_built_once(small_sample, small_sample_settings, tmp_path):
    other = tmp_path / "again"
    build(other, small_sample_settings, workers=1, quiet=True)
    assert _md5s(other) == _md5s(small_sample)  # same seed, same bytes
    assert (other / META_NAME).read_text() == (small_sample / META_NAME).read_text()

    # an interrupted build: one clip missing and a partial file left behind
    victim = _clips(other)[2]
    victim.unlink()
    (victim.parent / ".00001.mp4.x1y2z3.partial").write_bytes(b"half a file")
    (other / META_NAME).unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in _clips(other)}
    build(other, small_sample_settings, workers=1, quiet=True)
    assert _md5s(other) == _md5s(small_sample)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # finished clips were not redone
    assert not list(other.rglob(".*.partial"))  # the partial file was cleared, the clip written again

    # a finished dataset is not rebuilt; other settings into the same folder are refused
    r = subprocess.run([sys.executable, "-m", "src.sample", "--output", str(other), "--seed", "7",
                        "--size", "256", "--videos-per-identity", "1", "--clips-per-video", "1",
                        "--min-seconds", "1.0", "--max-seconds", "1.2", "--max-identities", "6",
                        "--test-identities", "1"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "already built" in r.stdout
    r = subprocess.run([sys.executable, "-m", "src.sample", "--output", str(other), "--seed", "8"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "other settings" in r.stderr and "Traceback" not in r.stderr
