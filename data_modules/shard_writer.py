"""Writing shard folders (what data_modules/shards.py reads): per-clip results, then litdata chunks and the
manifest. Used by preprocessing (src/preprocessing.py) and by SR's LQ renders (src/stages/sr_data.py).

A shard folder OUT holds:
  OUT/.work/<split>/<identity>/<video>/<clip>.npz (or .reject.json)  one clip, written atomically; resumable
  OUT/<split>/                                                       litdata chunks, one item per clip
  OUT/rejects.jsonl, OUT/manifest.json                               written last: the manifest marks completion
No pickle anywhere: arrays in .npz (allow_pickle=False), metadata in JSON.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from src.files import atomic_write_bytes, atomic_write_json, atomic_write_text, unchanged

FORMAT = "metaportrait-shards"
FORMAT_VERSION = 1


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


def work_path(work: Path, job: ClipJob, suffix: str) -> Path:
    return Path(work) / job.split / job.identity / job.video / f"{job.clip}{suffix}"


def is_done(work: Path, job: ClipJob) -> bool:
    """Whether the clip has a result (frames or a reject) for its input as it is now: a result recorded for a file
    since replaced or changed at the same path (its `input` fingerprint differs) is deleted, to be redone; so is
    a reject of a file fixed since. Results written before fingerprints were recorded are kept."""
    for suffix, read in ((".npz", load_meta), (".reject.json", lambda p: json.loads(Path(p).read_text()))):
        path = work_path(work, job, suffix)
        if path.exists():
            try:
                recorded = read(path).get("input", "unrecorded")
            except Exception:  # a damaged result (torn by a crash outside this project's atomic writes): redone
                recorded = None
            if recorded == "unrecorded" or unchanged(job.path, recorded):
                return True
            path.unlink()
    return False


def encode_jpegs(frames: list[np.ndarray], quality: int = 95) -> tuple[np.ndarray, np.ndarray]:
    """JPEG-encode RGB frames into one uint8 blob plus (F + 1) offsets."""
    blobs = [cv2.imencode(".jpg", f[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1].reshape(-1) for f in frames]
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return (np.concatenate(blobs) if blobs else np.zeros(0, np.uint8)), offsets


def write_clip(work: Path, job: ClipJob, arrays: dict, meta: dict) -> Path:
    """One clip's arrays (frames256/offsets256, frames512/offsets512, landmarks, align, embedding, frame_index)
    and its metadata, atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays, meta_json=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    return atomic_write_bytes(work_path(work, job, ".npz"), buf.getvalue())


def write_reject(work: Path, job: ClipJob, reason: str, input: dict | None = None) -> dict:
    """Record why a clip was not used; `input`: the source file's fingerprint (src.files), so a fixed file is
    tried again."""
    record = {"clip": job.key, "path": job.path, "reason": reason, **({"input": input} if input else {})}
    atomic_write_json(work_path(work, job, ".reject.json"), record)
    return record


def load_meta(path: str | Path) -> dict:
    """Only the metadata of a per-clip result (an .npz member is read on access, not the frames)."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(z["meta_json"].tobytes())


def load_clip(path: str | Path) -> dict:
    """A per-clip result as a dict of arrays plus its `meta`."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    out["meta"] = json.loads(out.pop("meta_json").tobytes())
    return out


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


def inputs_digest(jobs: list[ClipJob]) -> str:
    """A digest of the clips and of their files' sizes and times: a finished shard folder is up to date only while
    it is the same for the inputs found now."""
    def stamp(job: ClipJob) -> str:
        try:
            st = os.stat(job.path)
            return f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            return "absent"

    return hashlib.sha1("\n".join(sorted(f"{j.key} {stamp(j)}" for j in jobs)).encode()).hexdigest()


def pack(out: Path, work: Path, jobs: list[ClipJob], settings: dict, backend: dict) -> dict:
    """Write litdata chunks per split, then rejects.jsonl and manifest.json (last: it marks completion).
    `settings` (with `resolution` and `sr_resolution`) are recorded in the manifest; `backend` names the
    identity embeddings ({"backend": ..., "dim": ...})."""
    from litdata import StreamingDataset, optimize

    out, work = Path(out), Path(work)
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
        split_clips = [(j, p) for j, p in clips if j.split == split]
        target = out / split
        if target.exists():
            shutil.rmtree(target)
        # One writer keeps the items in input order, so a clip's index is its position in the split
        # (what episodes use for random access); packing only copies bytes, so it is I/O bound anyway.
        optimize(fn=_litdata_item, inputs=[str(p) for _, p in split_clips], output_dir=str(target),
                 chunk_bytes="64MB", num_workers=1, mode=None, verbose=False)
        ds = StreamingDataset(str(target))
        if len(ds) != len(split_clips) or ds[len(ds) - 1]["key"] != split_clips[-1][0].key:
            raise RuntimeError(f"litdata did not keep the input order in {target}")
        for index, (_, p) in enumerate(split_clips):
            manifest_clips.append({**load_meta(p), "index": index})
    manifest_clips.sort(key=lambda m: (m["split"], m["index"]))
    summary = {}
    for split in splits:
        ms = [m for m in manifest_clips if m["split"] == split]
        summary[split] = {
            "identities": sorted({m["identity"] for m in ms}), "clips": len(ms),
            "frames": int(sum(m["frames"] for m in ms)), "clips_with_sr": int(sum(m["has_sr"] for m in ms)),
        }
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "settings": settings, "embedding": backend,
        "landmarks": {"points": 478, "source": "mediapipe-facemesh", "normalised_to": "crop"},
        "resolution": settings["resolution"], "sr_resolution": settings["sr_resolution"],
        "splits": summary, "clips": manifest_clips, "num_rejects": len(rejects),
        "inputs_digest": inputs_digest(jobs),
    }
    atomic_write_text(out / "rejects.jsonl", "".join(json.dumps(r) + "\n" for r in rejects))
    atomic_write_json(out / "manifest.json", manifest)
    return manifest
