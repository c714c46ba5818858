"""Low-quality inputs for super-resolution training: the base generator's reconstruction of every real frame.

For each clip of a shard folder that has 512-px crops, the base model (a stage-1/meta checkpoint) renders
every frame from the clip's first frame (same-identity reconstruction, through src.inference.generate as at
inference), and a new shard folder is written whose low-resolution frames are those renders while the
high-resolution frames stay the real crops. Clips without 512-px crops are left out and counted. Per-clip
results are written first (`.work/`), so an interrupted render resumes; packing is the shard writer's.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.errors import UserError


def render_clip(generator, item: dict, resolution: int, device, batch: int = 8) -> list[np.ndarray]:
    """The base model's output for every frame of a clip, driven by its own landmarks from frame 0."""
    from data_modules.shards import decode_frames
    from src.inference import Source, generate

    landmarks = item["landmarks"].astype(np.float32)
    first = decode_frames(item, [0], size=resolution)[0]
    source = Source(first, landmarks[0], item["embedding"].astype(np.float32))
    return generate(generator, source, landmarks, device, batch, progress=False)


def first_frames(item: dict, n: int | None) -> dict:
    """The item cut to its first n frames (every per-frame array and both JPEG blobs); unchanged when n is None."""
    if n is None or n >= len(item["offsets256"]) - 1:
        return item
    out = dict(item)
    for blob, offsets in (("frames256", "offsets256"), ("frames512", "offsets512")):
        if len(item[offsets]) > 1:
            out[offsets] = np.asarray(item[offsets][: n + 1])
            out[blob] = np.frombuffer(item[blob], np.uint8)[: int(out[offsets][-1])].tobytes()
    for key in ("landmarks", "align", "frame_index"):
        out[key] = item[key][:n]
    return out


def render_lq_shards(base_checkpoint: str | Path, shards: str | Path, out: str | Path, device="cpu",
                     splits: list[str] | None = None, max_frames: int | None = None) -> dict:
    """Write `out`: the clips of `shards` with 512 crops, low-resolution frames rendered by the base model on
    `device` (the first `max_frames` frames of each clip when given: a CPU budget)."""
    from litdata import StreamingDataset

    from data_modules.shard_writer import ClipJob, encode_jpegs, pack, work_path, write_clip
    from data_modules.shards import has_hq, load_manifest
    from src.checkpoints import load_generator
    from src.files import atomic_write_json

    shards, out = Path(shards), Path(out)
    manifest = load_manifest(shards)
    generator, cfg, id_dim = load_generator(base_checkpoint)
    if id_dim != manifest["embedding"]["dim"]:
        raise UserError(f"base checkpoint {base_checkpoint} uses {id_dim}-D identity embeddings, the shards in "
                        f"{shards} hold {manifest['embedding']['dim']}-D ones")
    resolution = cfg["model"]["resolution"]
    record_path = out / "lq_source.json"
    wanted = {"base_checkpoint": str(base_checkpoint), "shards": str(shards), "resolution": resolution}
    if max_frames is not None:
        wanted["max_frames"] = int(max_frames)
    if record_path.exists() and json.loads(record_path.read_text()) != wanted:
        raise UserError(f"{out} holds LQ frames rendered from another base model or data ({record_path}); "
                        f"delete it to render again")
    if (out / "manifest.json").exists():
        return json.loads((out / "manifest.json").read_text())
    atomic_write_json(record_path, wanted)
    generator = generator.to(device).eval()
    work = out / ".work"
    jobs, skipped, datasets = [], 0, {}
    clips = [c for c in manifest["clips"] if splits is None or c["split"] in splits]
    for clip in tqdm(clips, desc=f"render LQ ({device})", unit="clip", dynamic_ncols=True):
        job = ClipJob(clip["split"], clip["identity"], clip["video"], clip["clip"], clip["source"])
        if not clip.get("has_sr"):
            skipped += 1
            continue
        if work_path(work, job, ".npz").exists():
            jobs.append(job)
            continue
        if clip["split"] not in datasets:
            datasets[clip["split"]] = StreamingDataset(str(shards / clip["split"]))
        item = first_frames(datasets[clip["split"]][clip["index"]], max_frames)
        if not has_hq(item):
            skipped += 1
            continue
        jobs.append(job)
        lq, offsets = encode_jpegs(render_clip(generator, item, resolution, device))
        meta = {k: v for k, v in clip.items() if k != "index"}
        meta["frames"] = len(item["landmarks"])
        meta["lq"] = {"base_checkpoint": str(base_checkpoint), "resolution": resolution}
        write_clip(work, job, {"frames256": lq, "offsets256": offsets,
                               "frames512": np.frombuffer(item["frames512"], np.uint8),
                               "offsets512": item["offsets512"],
                               "landmarks": item["landmarks"], "align": item["align"], "embedding": item["embedding"],
                               "frame_index": item["frame_index"]}, meta)
    if not jobs:
        raise UserError(f"no clip in {shards} has 512-px crops: super-resolution needs them (see preprocessing)")
    result = pack(out, work, jobs, {**manifest["settings"], "resolution": resolution}, manifest["embedding"])
    result["skipped_without_512"] = skipped
    atomic_write_json(out / "manifest.json", result)
    return result
