"""Preprocess talking-head videos into streaming shards.

    python -m src.preprocess --input ROOT --output OUT [--splits dev,test] [--workers N] ...

Input: VoxCeleb2's layout ROOT/{split}/mp4/<identity>/<video>/<clip>.mp4, or a plain folder of video files
(each file its own identity, all in the first split). Per clip: decode (PyAV); detect faces (dlib HOG every
few frames, retrying upsampled for small faces); follow the main face; one stable crop box per clip around
the head; crops at --resolution (and at --sr-resolution when the source has enough pixels); MediaPipe
FaceMesh (478 points) per frame; a 5-point similarity alignment per frame; one identity embedding per clip.

Two phases, both resumable:
  1. per clip -> OUT/.work/<split>/<identity>/<video>/<clip>.npz (or .reject.json), written atomically;
     finished clips are skipped on a re-run;
  2. pack -> litdata chunks in OUT/<split>/, then OUT/manifest.json and OUT/rejects.jsonl (written last).
No pickle anywhere: arrays in .npz (allow_pickle=False), metadata in JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from src.errors import UserError, cli_entry
from src.faces.tracking import crop_box, crop_frame, detect_sampled, main_track

PREPROCESS_VERSION = 1
VIDEO_EXTS = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}


@dataclass(frozen=True)
class Options:
    resolution: int = 256
    sr_resolution: int = 512
    sr_min_scale: float = 0.85     # store the SR crop when the source crop has >= this x sr_resolution pixels
    max_frames: int = 0            # 0: all frames
    min_frames: int = 8            # fewer frames with landmarks -> the clip is rejected
    min_face: int = 64             # median face box (px) below this -> rejected as too small
    detect_every: int = 10
    crop_scale: float = 1.8        # head crop side / face box side
    id_frames: int = 3
    identity_backend: str = "auto"  # resolved to insightface-arcface or dlib-resnet before work starts
    jpeg_quality: int = 95
    version: int = PREPROCESS_VERSION


@dataclass(frozen=True)
class ClipJob:
    split: str
    identity: str
    video: str
    clip: str
    path: str

    @property
    def key(self) -> str:
        return f"{self.split}/{self.identity}/{self.video}/{self.clip}"


class Reject(Exception):
    """A clip that cannot be used; the message is the reason recorded in rejects.jsonl."""


# ---------------------------------------------------------------------------------------------- discovery
def discover(root: Path, splits: list[str]) -> list[ClipJob]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--input {root} is not a folder")
    vox = [s for s in splits if (root / s / "mp4").is_dir()]
    jobs = []
    if vox:
        for split in vox:
            for path in sorted((root / split / "mp4").glob("*/*/*")):
                if path.suffix.lower() in VIDEO_EXTS:
                    jobs.append(ClipJob(split, path.parent.parent.name, path.parent.name, path.stem, str(path)))
    else:  # a plain folder: every video file is its own identity
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file()):
            name = path.relative_to(root).with_suffix("").as_posix().replace("/", "_")
            jobs.append(ClipJob(splits[0], name, name, "00001", str(path)))
    if not jobs:
        raise UserError(f"no video files found under {root} (expected {root}/<split>/mp4/<id>/<video>/<clip>.mp4 "
                        f"or a folder of {', '.join(sorted(VIDEO_EXTS))} files)")
    return jobs


def _encode(frames: list[np.ndarray], quality: int) -> tuple[np.ndarray, np.ndarray]:
    """JPEG-encode frames into one uint8 blob plus (F + 1) offsets."""
    blobs = [cv2.imencode(".jpg", f[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1].reshape(-1) for f in frames]
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return (np.concatenate(blobs) if blobs else np.zeros(0, np.uint8)), offsets


# ------------------------------------------------------------------------------------------- one clip
def process_clip(job: ClipJob, opts: Options, embedder) -> dict:
    """All arrays of one clip, or raise Reject with the reason."""
    from src.faces.align import alignment_matrix
    from src.faces.identity import clip_embedding
    from src.faces.landmarks import FaceMesh
    from src.video_io import iter_frames, probe

    timing = {}
    t0 = time.perf_counter()
    try:
        info = probe(job.path)
    except UserError as exc:
        raise Reject(f"unreadable: {exc}") from None
    frames, truncated = [], False
    try:
        for f in iter_frames(job.path):
            frames.append(f)
            if opts.max_frames and len(frames) >= opts.max_frames:
                break
    except UserError:
        truncated = True  # keep the frames decoded before the damage
    if not frames:
        raise Reject("no decodable frames (empty, corrupt or truncated file)")
    if len(frames) < opts.min_frames:
        raise Reject(f"too few frames: {len(frames)} < {opts.min_frames}")
    timing["decode"] = time.perf_counter() - t0

    t = time.perf_counter()
    track, most = main_track(detect_sampled(frames, opts.detect_every))
    sampled = len(range(0, len(frames), opts.detect_every))
    if not track:
        raise Reject("no face detected")
    if len(track) < 0.3 * sampled:
        raise Reject(f"face not tracked consistently ({len(track)} of {sampled} sampled frames)")
    face_px = float(np.median([max(b.width, b.height) for b in track]))
    if face_px < opts.min_face:
        raise Reject(f"face too small: {face_px:.0f} px < {opts.min_face} px (--min-face)")
    box = crop_box(track, opts.crop_scale)
    timing["detect"] = time.perf_counter() - t

    t = time.perf_counter()
    crops = [crop_frame(f, box, opts.resolution) for f in frames]
    has_sr = box[2] >= opts.sr_min_scale * opts.sr_resolution
    landmarks, kept = [], []
    # One face in tracking mode (MediaPipe re-detects every frame while it tracks fewer than max_faces).
    # The crop is centred on the tracked face, so a mesh far from the centre is another person: dropped.
    with FaceMesh(static=False, max_faces=1) as mesh:
        for i, crop in enumerate(crops):
            faces = mesh(crop)
            if faces and np.abs(faces[0][:468, :2].mean(0) - 0.5).max() < 0.25:
                landmarks.append(faces[0])
                kept.append(i)
    if len(kept) < opts.min_frames:
        raise Reject(f"face lost: landmarks on {len(kept)} of {len(frames)} frames (need {opts.min_frames})")
    timing["landmarks"] = time.perf_counter() - t

    t = time.perf_counter()
    crops = [crops[i] for i in kept]
    sr_crops = [crop_frame(frames[i], box, opts.sr_resolution) for i in kept] if has_sr else []
    frames256, offsets256 = _encode(crops, opts.jpeg_quality)
    frames512, offsets512 = _encode(sr_crops, opts.jpeg_quality)
    align = np.stack([alignment_matrix(lm) for lm in landmarks])
    timing["encode"] = time.perf_counter() - t

    t = time.perf_counter()
    pick = np.linspace(0, len(kept) - 1, min(opts.id_frames, len(kept))).round().astype(int)
    source = sr_crops if has_sr else crops
    embedding = clip_embedding(embedder, [source[k] for k in pick], [landmarks[k] for k in pick])
    timing["identity"] = time.perf_counter() - t

    meta = {
        "key": job.key, "split": job.split, "identity": job.identity, "video": job.video, "clip": job.clip,
        "source": job.path, "fps": info.fps, "source_size": [info.width, info.height],
        "decoded_frames": len(frames), "frames": len(kept), "dropped_frames": len(frames) - len(kept),
        "truncated": truncated, "faces_seen": most, "face_px": face_px,
        "crop_box": [round(float(v), 2) for v in box], "has_sr": bool(has_sr),
        "timing": {k: round(v, 4) for k, v in timing.items()},
    }
    return {
        "frames256": frames256, "offsets256": offsets256, "frames512": frames512, "offsets512": offsets512,
        "landmarks": np.stack(landmarks).astype(np.float16), "align": align.astype(np.float32),
        "embedding": embedding, "frame_index": np.asarray(kept, np.int32),
        "meta_json": np.frombuffer(json.dumps(meta).encode(), np.uint8),
    }


# ------------------------------------------------------------------------------------ phase 1: the clips
def work_path(work: Path, job: ClipJob, suffix: str) -> Path:
    return work / job.split / job.identity / job.video / f"{job.clip}{suffix}"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


_WORKER: dict = {}


def _init_worker(opts: Options) -> None:
    from src.faces.identity import make_embedder

    cv2.setNumThreads(1)
    _WORKER["opts"] = opts
    _WORKER["embedder"] = make_embedder(
        "insightface" if opts.identity_backend == "insightface-arcface" else "dlib")


def run_job(args: tuple[ClipJob, str]) -> tuple[str, str, dict]:
    """Process one clip and write its result file; returns (key, 'ok' | 'reject', info)."""
    job, work = args
    work = Path(work)
    try:
        arrays = process_clip(job, _WORKER["opts"], _WORKER["embedder"])
    except Reject as exc:
        record = {"clip": job.key, "path": job.path, "reason": str(exc)}
        _atomic_write(work_path(work, job, ".reject.json"), json.dumps(record).encode())
        return job.key, "reject", record
    except Exception as exc:  # one bad clip never aborts the run
        record = {"clip": job.key, "path": job.path, "reason": f"error: {type(exc).__name__}: {exc}"}
        _atomic_write(work_path(work, job, ".reject.json"), json.dumps(record).encode())
        return job.key, "reject", record
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _atomic_write(work_path(work, job, ".npz"), buf.getvalue())
    return job.key, "ok", json.loads(arrays["meta_json"].tobytes())


def load_meta(path: str | Path) -> dict:
    """Only the metadata of a phase-1 result (an .npz member is read on access, not the frames)."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(z["meta_json"].tobytes())


def load_clip(path: str | Path) -> dict:
    """A phase-1 result as a dict of arrays plus its `meta`."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    out["meta"] = json.loads(out.pop("meta_json").tobytes())
    return out


def process_all(jobs: list[ClipJob], work: Path, opts: Options, workers: int, quiet: bool) -> dict:
    todo = [j for j in jobs if not (work_path(work, j, ".npz").exists() or work_path(work, j, ".reject.json").exists())]
    counts = {"ok": 0, "reject": 0, "frames": 0}
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="clip", desc="preprocess", disable=quiet,
               dynamic_ncols=True)
    t0 = time.time()
    args = [(j, str(work)) for j in todo]

    def update(key, status, info):
        counts[status] += 1
        counts["frames"] += info.get("frames", 0) if status == "ok" else 0
        if status == "reject" and not quiet:
            tqdm.write(f"rejected {key}: {info['reason']}")
        bar.set_postfix(rejects=counts["reject"], fps=f"{counts['frames'] / max(time.time() - t0, 1e-6):.0f}")
        bar.update()

    if workers > 1 and len(todo) > 1:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
        with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(opts,)) as pool:
            for result in pool.imap_unordered(run_job, args):
                update(*result)
    elif todo:
        _init_worker(opts)
        for a in args:
            update(*run_job(a))
    bar.close()
    counts["seconds"] = time.time() - t0
    return counts


# ------------------------------------------------------------------------------------ phase 2: packing
def _litdata_item(path: str) -> dict:
    c = load_clip(path)
    m = c["meta"]
    return {
        "key": m["key"], "identity": m["identity"], "fps": float(m["fps"]),
        "frames256": c["frames256"].tobytes(), "offsets256": c["offsets256"],
        "frames512": c["frames512"].tobytes(), "offsets512": c["offsets512"],
        "landmarks": c["landmarks"], "align": c["align"], "embedding": c["embedding"],
        "frame_index": c["frame_index"],
    }


def pack(out: Path, work: Path, jobs: list[ClipJob], opts: Options, backend: dict) -> dict:
    """Write litdata chunks per split, then rejects.jsonl and manifest.json (last: it marks completion)."""
    from litdata import optimize

    clips, rejects = [], []
    for j in jobs:
        npz, rej = work_path(work, j, ".npz"), work_path(work, j, ".reject.json")
        if npz.exists():
            clips.append((j, npz))
        elif rej.exists():
            rejects.append(json.loads(rej.read_text()))
    splits = sorted({j.split for j, _ in clips})
    manifest_clips = []
    for split in splits:
        paths = [str(p) for j, p in clips if j.split == split]
        target = out / split
        if target.exists():
            shutil.rmtree(target)
        # One writer keeps the items in input order, so a clip's index is its position in `paths`
        # (what episodes use for random access); packing only copies bytes, so it is I/O bound anyway.
        optimize(fn=_litdata_item, inputs=paths, output_dir=str(target), chunk_bytes="64MB",
                 num_workers=1, mode=None, verbose=False)
        from litdata import StreamingDataset

        ds = StreamingDataset(str(target))
        split_clips = [(j, p) for j, p in clips if j.split == split]
        if len(ds) != len(paths) or ds[len(ds) - 1]["key"] != split_clips[-1][0].key:
            raise RuntimeError(f"litdata did not keep the input order in {target}")
        for index, (j, p) in enumerate(split_clips):
            meta = load_meta(p)
            meta["index"] = index
            manifest_clips.append(meta)
    manifest_clips.sort(key=lambda m: (m["split"], m["index"]))
    summary = {}
    for split in splits:
        ms = [m for m in manifest_clips if m["split"] == split]
        summary[split] = {
            "identities": sorted({m["identity"] for m in ms}), "clips": len(ms),
            "frames": int(sum(m["frames"] for m in ms)), "clips_with_sr": int(sum(m["has_sr"] for m in ms)),
        }
    manifest = {
        "format": "metaportrait-shards", "version": PREPROCESS_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "settings": asdict(opts), "embedding": backend, "landmarks": {"points": 478, "source": "mediapipe-facemesh",
                                                                      "normalised_to": "crop"},
        "resolution": opts.resolution, "sr_resolution": opts.sr_resolution,
        "splits": summary, "clips": manifest_clips, "num_rejects": len(rejects),
        "inputs_digest": _digest(jobs),
    }
    _atomic_write(out / "rejects.jsonl", "".join(json.dumps(r) + "\n" for r in rejects).encode())
    _atomic_write(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    return manifest


def _digest(jobs: list[ClipJob]) -> str:
    return hashlib.sha1("\n".join(sorted(j.key for j in jobs)).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ CLI
def parse_args(argv):
    d = Options()
    p = argparse.ArgumentParser(prog="python -m src.preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, type=Path, help="VoxCeleb2-style root or a folder of videos")
    p.add_argument("--output", required=True, type=Path, help="shard folder (re-runs resume)")
    p.add_argument("--splits", default="dev,test", help="comma-separated splits to process (default dev,test)")
    p.add_argument("--resolution", type=int, default=d.resolution)
    p.add_argument("--sr-resolution", type=int, default=d.sr_resolution)
    p.add_argument("--sr-min-scale", type=float, default=d.sr_min_scale,
                   help="store the SR crop when the source crop is at least this fraction of --sr-resolution")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--identity-backend", default="auto", choices=["auto", "insightface", "dlib"])
    p.add_argument("--max-frames-per-clip", type=int, default=0, help="0: all frames")
    p.add_argument("--min-frames", type=int, default=d.min_frames)
    p.add_argument("--min-face", type=int, default=d.min_face, help="smallest usable face box in source pixels")
    p.add_argument("--detect-every", type=int, default=d.detect_every, help="run the face detector every N frames")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def run(argv=None) -> dict | None:
    a = parse_args(argv)
    if not 0 <= a.node_rank < a.num_nodes:
        raise UserError(f"--node-rank must be in [0, {a.num_nodes})")
    splits = [s for s in a.splits.split(",") if s]
    jobs = discover(a.input, splits)
    out, work = Path(a.output), Path(a.output) / ".work"
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to {out}: {exc.strerror}") from None
    for stale in work.rglob("*.tmp"):  # left by a killed run
        stale.unlink()

    from src.faces.identity import make_embedder

    backend_name = None
    settings_file = work / "settings.json"
    if settings_file.exists():
        previous = json.loads(settings_file.read_text())
        backend_name = previous["identity_backend"]
        if a.identity_backend != "auto" and not backend_name.startswith(a.identity_backend):
            raise UserError(f"{out} was preprocessed with the {backend_name} identity backend; embeddings of "
                            f"different backends cannot be mixed: use another --output")
    if backend_name is None:
        embedder = make_embedder(a.identity_backend)
        backend_name = embedder.name
    opts = Options(resolution=a.resolution, sr_resolution=a.sr_resolution, sr_min_scale=a.sr_min_scale,
                   max_frames=a.max_frames_per_clip, min_frames=a.min_frames, min_face=a.min_face,
                   detect_every=a.detect_every, identity_backend=backend_name)
    if settings_file.exists() and json.loads(settings_file.read_text()) != asdict(opts):
        raise UserError(f"{out} holds clips preprocessed with other settings ({settings_file}); "
                        f"use another --output or delete {out}")
    _atomic_write(settings_file, json.dumps(asdict(opts), indent=1).encode())
    backend = {"backend": backend_name, "dim": 512 if backend_name == "insightface-arcface" else 128}

    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("inputs_digest") == _digest(jobs) and old.get("settings") == asdict(opts):
            if not a.quiet:
                print(f"{out} is up to date ({sum(s['clips'] for s in old['splits'].values())} clips); nothing to do")
            return old

    mine = [j for i, j in enumerate(jobs) if i % a.num_nodes == a.node_rank]
    counts = process_all(mine, work, opts, a.workers, a.quiet)
    pending = [j for j in jobs if not (work_path(work, j, ".npz").exists() or work_path(work, j, ".reject.json").exists())]
    if pending:
        print(f"node {a.node_rank}: done with its clips; {len(pending)} clips of other nodes are pending. "
              f"Re-run any node once all have finished to pack the shards.")
        return None
    manifest = pack(out, work, jobs, opts, backend)
    if not a.quiet:
        total = sum(s["clips"] for s in manifest["splits"].values())
        per_split = ", ".join(f"{k}: {v['clips']}" for k, v in manifest["splits"].items())
        print(f"{total} clips in {out} ({per_split}), "
              f"{manifest['num_rejects']} rejected (see rejects.jsonl); processed {counts['ok'] + counts['reject']} "
              f"clips this run in {counts['seconds']:.1f} s")
    return manifest


@cli_entry
def main(argv=None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
