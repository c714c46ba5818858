"""Preprocessing talking-head videos into streaming shards (`python -m src.preprocess` is its command line).

Input: VoxCeleb2's layout ROOT/{split}/mp4/<identity>/<video>/<clip>.mp4, or a plain folder of video files
(each file its own identity, all in the first split). Per clip: decode (PyAV); detect faces (dlib HOG every
few frames, retrying upsampled for small faces); follow the main face; one stable crop box per clip around
the head; crops at --resolution (and at --sr-resolution when the source has enough pixels); MediaPipe
FaceMesh (478 points) per frame; a 5-point similarity alignment per frame; one identity embedding per clip.

Two phases, both resumable (the shard layout is data_modules/shard_writer.py's):
  1. per clip -> OUT/.work/<split>/<identity>/<video>/<clip>.npz (or .reject.json), written atomically;
     finished clips are skipped on a re-run;
  2. pack -> litdata chunks in OUT/<split>/, then OUT/manifest.json and OUT/rejects.jsonl (written last).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data_modules.shard_writer import (
    FORMAT_VERSION,
    ClipJob,
    encode_jpegs,
    inputs_digest,
    is_done,
    pack,
    write_clip,
    write_reject,
)
from src.errors import UserError
from src.faces.identity import backend_choice, embedding_dim
from src.faces.tracking import CROP_SCALE, crop_box, crop_frame, detect_sampled, main_track
from src.files import atomic_write_json, fingerprint, read_json, remove_partials
from src.paths import check_output, require_dir

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
    crop_scale: float = CROP_SCALE  # head crop side / face box side
    id_frames: int = 3
    identity_backend: str = "auto"  # resolved to insightface-arcface or dlib-resnet before work starts
    jpeg_quality: int = 95
    keep_damaged: bool = False      # a clip with fewer frames than its container declares: kept (else rejected)
    version: int = FORMAT_VERSION

    def __post_init__(self):  # the command line checks these when it parses; a caller of preprocess() gets this
        bad = [name for name, ok in (("resolution", self.resolution >= 16), ("sr_resolution", self.sr_resolution >= 16),
                                     ("sr_min_scale", self.sr_min_scale > 0), ("max_frames", self.max_frames >= 0),
                                     ("min_frames", self.min_frames >= 1), ("min_face", self.min_face >= 1),
                                     ("detect_every", self.detect_every >= 1), ("id_frames", self.id_frames >= 1),
                                     ("jpeg_quality", 1 <= self.jpeg_quality <= 100)) if not ok]
        if bad:
            raise UserError(f"preprocessing options out of range: {', '.join(bad)}")


class Reject(Exception):
    """A clip that cannot be used; the message is the reason recorded in rejects.jsonl."""


# ---------------------------------------------------------------------------------------------- discovery
def discover(root: Path, splits: list[str]) -> list[ClipJob]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--input {root} is not a folder")
    found = sorted(p.name for p in root.iterdir() if (p / "mp4").is_dir())  # VoxCeleb2's <split>/mp4 folders
    missing = [s for s in splits if s not in found]
    if found and missing:  # a mistyped split would otherwise read the whole tree as a plain folder of videos
        raise UserError(f"--splits {','.join(missing)}: no such split under {root} (found: {', '.join(found)})")
    vox = [s for s in splits if s in found]
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


# ------------------------------------------------------------------------------------------- one clip
def process_clip(job: ClipJob, opts: Options, embedder) -> tuple[dict, dict]:
    """(arrays, metadata) of one clip, or raise Reject with the reason."""
    from src.faces.align import alignment_matrix
    from src.faces.identity import clip_embedding
    from src.faces.landmarks import FaceMesh, centred_face
    from src.video_io import iter_frames, probe, short_by

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
    if not (opts.max_frames and len(frames) >= opts.max_frames) and short_by(len(frames), info.declared_frames):
        truncated = True  # e.g. a cut file whose index (at the front) still lists every frame
        if not opts.keep_damaged:
            raise Reject(f"damaged: {len(frames)} of the {info.declared_frames} frames its container declares "
                         "could be decoded")
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
            if centred_face(faces):
                landmarks.append(faces[0])
                kept.append(i)
    if len(kept) < opts.min_frames:
        raise Reject(f"face lost: landmarks on {len(kept)} of {len(frames)} frames (need {opts.min_frames})")
    timing["landmarks"] = time.perf_counter() - t

    t = time.perf_counter()
    crops = [crops[i] for i in kept]
    sr_crops = [crop_frame(frames[i], box, opts.sr_resolution) for i in kept] if has_sr else []
    frames256, offsets256 = encode_jpegs(crops, opts.jpeg_quality)
    frames512, offsets512 = encode_jpegs(sr_crops, opts.jpeg_quality)
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
        "decoded_frames": len(frames), "declared_frames": info.declared_frames, "frames": len(kept),
        "dropped_frames": len(frames) - len(kept),
        "truncated": truncated, "faces_seen": most, "face_px": face_px,
        "crop_box": [round(float(v), 2) for v in box], "has_sr": bool(has_sr),
        "timing": {k: round(v, 4) for k, v in timing.items()},
    }
    arrays = {
        "frames256": frames256, "offsets256": offsets256, "frames512": frames512, "offsets512": offsets512,
        "landmarks": np.stack(landmarks).astype(np.float16), "align": align.astype(np.float32),
        "embedding": embedding, "frame_index": np.asarray(kept, np.int32),
    }
    return arrays, meta


# ------------------------------------------------------------------------------------ phase 1: the clips
_WORKER: dict = {}


def _init_worker(opts: Options) -> None:
    from src.faces.identity import make_embedder

    cv2.setNumThreads(1)
    _WORKER["opts"] = opts
    _WORKER["embedder"] = make_embedder(backend_choice(opts.identity_backend))


def run_job(args: tuple[ClipJob, str]) -> tuple[str, str, dict]:
    """Process one clip and write its result file; returns (key, 'ok' | 'reject', info)."""
    job, work = args
    try:
        source = fingerprint(job.path)  # before reading: a file changed meanwhile is redone by the next run
    except OSError as exc:
        return job.key, "reject", write_reject(Path(work), job, f"unreadable: {exc.strerror}")
    try:
        arrays, meta = process_clip(job, _WORKER["opts"], _WORKER["embedder"])
    except Reject as exc:
        return job.key, "reject", write_reject(Path(work), job, str(exc), source)
    except Exception as exc:  # one bad clip never aborts the run
        return job.key, "reject", write_reject(Path(work), job, f"error: {type(exc).__name__}: {exc}", source)
    write_clip(Path(work), job, arrays, {**meta, "input": source})
    return job.key, "ok", meta


def process_all(jobs: list[ClipJob], work: Path, opts: Options, workers: int, quiet: bool) -> dict:
    todo = [j for j in jobs if not is_done(work, j)]
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


# ------------------------------------------------------------------------------------------ the whole job
def preprocess(input: str | Path, output: str | Path, splits: tuple[str, ...] = ("dev", "test"),
               options: Options = Options(), workers: int = min(2, os.cpu_count() or 1), num_nodes: int = 1,
               node_rank: int = 0, quiet: bool = False) -> dict | None:
    """Preprocess the videos under `input` into the shard folder `output` (resumable); the manifest, or None
    when this node is done but clips of other nodes are still pending. `options.identity_backend`: auto,
    insightface or dlib (resolved to the backend's full name before work starts)."""
    if not 0 <= node_rank < num_nodes:
        raise UserError(f"--node-rank must be in [0, {num_nodes})")
    # packing clears OUT/<split>: an output that is, holds or sits inside the input would delete it
    check_output(Path(output), {"--input": require_dir(Path(input), "--input")}, kind="folder")
    jobs = discover(Path(input), [s for s in splits if s])
    out, work = Path(output), Path(output) / ".work"
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to {out}: {exc.strerror}") from None
    remove_partials(work)  # left by a killed run

    from src.faces.identity import make_embedder

    wanted = options.identity_backend
    backend_name = None
    settings_file = work / "settings.json"
    recorded = None
    if settings_file.exists():  # keys added since it was written take their defaults
        recorded = {**asdict(Options()), **read_json(settings_file, f": delete {out} to preprocess again")}
        backend_name = str(recorded["identity_backend"])
        if wanted != "auto" and not backend_name.startswith(wanted):
            raise UserError(f"{out} was preprocessed with the {backend_name} identity backend; embeddings of "
                            f"different backends cannot be mixed: use another --output")
    if backend_name is None:
        backend_name = make_embedder(wanted).name
    opts = replace(options, identity_backend=backend_name)
    if recorded is not None and recorded != asdict(opts):
        raise UserError(f"{out} holds clips preprocessed with other settings ({settings_file}); "
                        f"use another --output or delete {out}")
    atomic_write_json(settings_file, asdict(opts))
    backend = {"backend": backend_name, "dim": embedding_dim(backend_name)}

    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = read_json(manifest_path, f": delete it to pack {out} again")
        if old.get("inputs_digest") == inputs_digest(jobs) and old.get("settings") == asdict(opts):
            if not quiet:
                print(f"{out} is up to date ({sum(s['clips'] for s in old['splits'].values())} clips); nothing to do")
            return old

    mine = [j for i, j in enumerate(jobs) if i % num_nodes == node_rank]
    counts = process_all(mine, work, opts, workers, quiet)
    pending = [j for j in jobs if not is_done(work, j)]
    if pending:
        print(f"node {node_rank}: done with its clips; {len(pending)} clips of other nodes are pending. "
              f"Re-run any node once all have finished to pack the shards.")
        return None
    manifest = pack(out, work, jobs, asdict(opts), backend)
    if not quiet:
        total = sum(s["clips"] for s in manifest["splits"].values())
        per_split = ", ".join(f"{k}: {v['clips']}" for k, v in manifest["splits"].items())
        print(f"{total} clips in {out} ({per_split}), "
              f"{manifest['num_rejects']} rejected (see rejects.jsonl); processed {counts['ok'] + counts['reject']} "
              f"clips this run in {counts['seconds']:.1f} s")
    return manifest
