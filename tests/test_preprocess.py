"""Preprocessing real talking-head clips (and bad files) into shards."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from data_modules.shard_writer import load_clip
from data_modules.shards import decode_frames, load_manifest
from src.errors import UserError
from src.faces.landmarks import FaceMesh
from src.faces.tracking import crop_frame
from src.preprocess import run
from src.video_io import read_frames
from tests.conftest import PREPROCESS_ARGS, REPO

BAD = {"dev/id99991/corrupt/00001", "dev/id99992/empty/00001", "dev/id99993/truncated/00001",
       "dev/id99994/noface/00001"}


def _real_keys(fixtures_dir) -> set[str]:
    root = fixtures_dir / "voxceleb2_mini"
    return {p.relative_to(root).as_posix().replace("/mp4/", "/").removesuffix(".mp4")
            for p in root.glob("*/mp4/*/*/*.mp4")}


def test_every_real_clip_in_manifest_bad_ones_rejected(shards, fixtures_dir):
    manifest = load_manifest(shards)
    keys = {c["key"] for c in manifest["clips"]}
    assert keys == _real_keys(fixtures_dir)
    rejects = {r["clip"]: r["reason"] for r in map(json.loads, (shards / "rejects.jsonl").read_text().splitlines())}
    assert set(rejects) == BAD
    assert "no face" in rejects["dev/id99994/noface/00001"]
    for key in BAD - {"dev/id99994/noface/00001"}:
        assert any(w in rejects[key] for w in ("unreadable", "no decodable", "too few")), rejects[key]
    assert manifest["embedding"] == {"backend": "dlib-resnet", "dim": 128}  # offline here: dlib
    assert manifest["splits"]["test"]["identities"] == ["id90010", "id90012"]
    for c in manifest["clips"]:
        assert 8 <= c["frames"] <= 30 and c["has_sr"] == (c["crop_box"][2] >= 0.85 * 512)
    assert not list(shards.rglob("*.pkl")) and not list(shards.rglob("*.pickle"))


def test_stored_arrays(shards):
    from litdata import StreamingDataset

    ds = StreamingDataset(str(shards / "dev"))
    manifest = load_manifest(shards)
    item = ds[0]
    meta = next(c for c in manifest["clips"] if c["split"] == "dev" and c["index"] == 0)
    assert item["key"] == meta["key"]
    n = meta["frames"]
    assert item["landmarks"].shape == (n, 478, 3) and item["landmarks"].dtype == np.float16
    assert item["align"].shape == (n, 2, 3) and item["embedding"].shape == (128,)
    assert abs(np.linalg.norm(item["embedding"]) - 1) < 1e-3
    frames = decode_frames(item, range(n))
    assert frames.shape == (n, 256, 256, 3)
    if meta["has_sr"]:
        assert decode_frames(item, [0], hq=True).shape == (1, 512, 512, 3)


def test_landmarks_line_up_with_the_face(shards, preprocess_input):
    """Stored landmarks vs an independent reference: MediaPipe run on the *original* full frame, mapped
    into the crop with the recorded crop box."""
    manifest = load_manifest(shards)
    for meta in manifest["clips"][::6]:
        clip = load_clip(shards / ".work" / f"{meta['key']}.npz")
        frame_no = int(clip["frame_index"][len(clip["frame_index"]) // 2])
        original = read_frames(meta["source"])[frame_no]
        with FaceMesh(static=True) as mesh:
            faces = mesh(original)
        assert faces
        h, w = original.shape[:2]
        cx, cy, side = meta["crop_box"]
        ref = np.stack([(f[:, 0] * w - (cx - side / 2)) / side for f in faces], 0), \
            np.stack([(f[:, 1] * h - (cy - side / 2)) / side for f in faces], 0)
        k = list(clip["frame_index"]).index(frame_no)
        stored = clip["landmarks"][k, :, :2].astype(np.float32)
        errors = [np.mean(np.hypot(ref[0][i] - stored[:, 0], ref[1][i] - stored[:, 1])) for i in range(len(faces))]
        assert min(errors) < 0.015, (meta["key"], errors)  # under 4 px at 256
        # and the crop itself shows that face: the nose tip is near the crop's centre, not at its border
        assert 0.3 < stored[1, 0] < 0.7 and 0.3 < stored[1, 1] < 0.75


def test_rerun_does_not_reprocess_and_resumes(tmp_path, preprocess_input, shards):
    work = shards / ".work"
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*.npz")}
    r = subprocess.run([sys.executable, "-m", "src.preprocess", "--input", str(preprocess_input), "--output",
                        str(shards), *PREPROCESS_ARGS[:-1]], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "up to date" in r.stdout, r.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*.npz")} == before

    # an interrupted run: one clip unfinished (its temp file left behind) and no manifest yet
    victim = sorted(work.rglob("*.npz"))[3]
    victim.rename(victim.with_name(f".{victim.name}.k1ll3d.partial"))
    manifest = (shards / "manifest.json").read_bytes()
    (shards / "manifest.json").unlink()
    run(["--input", str(preprocess_input), "--output", str(shards), *PREPROCESS_ARGS])
    after = {p: p.stat().st_mtime_ns for p in work.rglob("*.npz")}
    assert victim.exists() and not list(work.rglob(".*.partial"))
    assert all(after[p] == t for p, t in before.items() if p != victim)  # only the victim was redone
    new = json.loads((shards / "manifest.json").read_bytes())
    assert {c["key"] for c in new["clips"]} == {c["key"] for c in json.loads(manifest)["clips"]}


def test_bad_arguments_are_clear(tmp_path):
    r = subprocess.run([sys.executable, "-m", "src.preprocess", "--input", str(tmp_path / "nope"), "--output",
                        str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "--input" in r.stderr and "does not exist" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "src.preprocess", "--input", str(tmp_path / "empty"), "--output",
                        str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "no video files" in r.stderr


def test_plain_folder_of_videos(tmp_path, fixtures_dir):
    """Personal footage: a folder of files, each its own identity."""
    src = sorted((fixtures_dir / "voxceleb2_mini" / "test" / "mp4").glob("*/*/*.mp4"))
    folder = tmp_path / "me"
    folder.mkdir()
    for i, p in enumerate(src):
        (folder / f"take{i}.mp4").write_bytes(p.read_bytes())
    manifest = run(["--input", str(folder), "--output", str(tmp_path / "out"), "--workers", "1",
                    "--max-frames-per-clip", "12", "--quiet"])
    assert sorted(c["identity"] for c in manifest["clips"]) == ["take0", "take1"]
    assert list(manifest["splits"]) == ["dev"]


def test_crop_frame_pads_outside_the_picture():
    img = np.full((100, 100, 3), 200, np.uint8)
    out = crop_frame(img, (10.0, 10.0, 80.0), 64)
    assert out.shape == (64, 64, 3) and out.min() == 200  # replicated border, no black bars


def test_lost_frames_two_faces_and_nodes(tmp_path, fixtures_dir):
    """Videos made from real clips: a face that vanishes for 8 frames (those frames dropped, the clip
    kept), two people side by side (the larger is followed), processed as two nodes of a cluster."""
    import cv2

    from src.video_io import write_video

    clips = sorted((fixtures_dir / "voxceleb2_mini" / "dev" / "mp4").glob("*/*/*.mp4"))
    a, b = read_frames(clips[0])[:24], read_frames(clips[5])[:24]
    folder = tmp_path / "videos"
    folder.mkdir()
    gap = np.full_like(a[:8], 127)
    write_video(folder / "gap.mp4", np.concatenate([a[:12], gap, a[12:]]), fps=25)
    h = a.shape[1]
    small = np.stack([cv2.resize(f, (f.shape[1] // 2, f.shape[0] // 2)) for f in b])
    canvas = np.zeros((24, h, a.shape[2] + small.shape[2], 3), np.uint8)
    canvas[:, :, : a.shape[2]] = a
    canvas[:, : small.shape[1], a.shape[2] :] = small
    write_video(folder / "two.mp4", canvas, fps=25)

    args = ["--input", str(folder), "--output", str(tmp_path / "out"), "--workers", "1", "--quiet", "--num-nodes", "2"]
    assert run([*args, "--node-rank", "1"]) is None  # the other node's clip is pending: nothing packed yet
    assert not (tmp_path / "out" / "manifest.json").exists()
    manifest = run([*args, "--node-rank", "0"])  # the last node to finish packs everything
    clips_by_id = {c["identity"]: c for c in manifest["clips"]}
    assert set(clips_by_id) == {"gap", "two"}
    gap_clip = clips_by_id["gap"]
    assert gap_clip["decoded_frames"] == 32 and gap_clip["dropped_frames"] == 8 and gap_clip["frames"] == 24
    two = clips_by_id["two"]
    assert two["faces_seen"] == 2
    assert two["crop_box"][0] < a.shape[2]  # the crop is centred on the larger face (left half)


def test_an_output_that_overlaps_the_input_is_refused_and_the_input_is_untouched(tmp_path, fixtures_dir):
    """Packing clears OUT/<split>: with OUT = the input (or around it) that would delete the input's videos."""
    import hashlib
    import shutil

    root = tmp_path / "vox"
    clip = next((fixtures_dir / "voxceleb2_mini" / "dev" / "mp4").glob("*/*/*.mp4"))
    target = root / "dev" / "mp4" / "id1" / "v1" / "00001.mp4"
    target.parent.mkdir(parents=True)
    shutil.copy(clip, target)
    digest = hashlib.sha1(target.read_bytes()).hexdigest()
    for output in (root, tmp_path, root / "dev"):
        r = subprocess.run([sys.executable, "-m", "src.preprocess", "--input", str(root), "--output", str(output)],
                           cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 2 and "overlaps --input" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert hashlib.sha1(target.read_bytes()).hexdigest() == digest
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["dev", "dev/mp4", "dev/mp4/id1",
                                                                               "dev/mp4/id1/v1",
                                                                               "dev/mp4/id1/v1/00001.mp4"]


def test_a_shard_index_that_asks_for_pickle_is_refused(shards, tmp_path):
    """A shard folder is data: litdata would unpickle a field declared `pickle`, so the index is checked first."""
    import shutil


    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    index = copy / "test" / "index.json"
    data = json.loads(index.read_text())
    data["config"]["data_format"][0] = "pickle"
    index.write_text(json.dumps(data))
    with pytest.raises(UserError, match="pickle.*refused"):
        load_manifest(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_manifest(copy)
    assert load_manifest(shards)["format"] == "metaportrait-shards"  # the real index passes
