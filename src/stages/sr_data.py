"""Low-quality inputs for super-resolution training: the base generator's reconstruction of every real frame.

For each clip of a shard folder that has 512-px crops, the base model (a stage-1/meta checkpoint) renders
every frame from the clip's first frame (same-identity reconstruction, as at inference), and a new shard
folder is written whose low-resolution frames are those renders while the high-resolution frames stay the
real crops. Clips without 512-px crops are left out and counted. Per-clip results are written first
(`.work/`), so an interrupted render resumes; packing reuses the preprocessing code.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from src.errors import UserError


@torch.no_grad()
def render_clip(generator, item: dict, resolution: int, device, renderer, batch: int = 8) -> list[np.ndarray]:
    """The base model's output for every frame of a clip, driven by its own landmarks from frame 0."""
    from data_modules.shards import decode_frames, num_frames
    from src.faces.render import gaze_heatmaps, region_masks

    n = num_frames(item)
    frames = torch.from_numpy(decode_frames(item, range(n), size=resolution)).permute(0, 3, 1, 2).float().div(255)
    lms = torch.from_numpy(item["landmarks"].astype(np.float32))
    source = frames[:1].to(device)
    src_points = lms[:1].to(device)
    src_lmk = renderer(src_points, resolution)
    ident = torch.from_numpy(item["embedding"].copy())[None].to(device)
    out = []
    for i in range(0, n, batch):
        lm = lms[i : i + batch].to(device)
        k = len(lm)
        _, mouth = region_masks(lm, resolution)
        pred = generator(source.expand(k, -1, -1, -1), src_lmk.expand(k, -1, -1, -1), renderer(lm, resolution),
                         ident.expand(k, -1), gaze_heatmaps(lm, resolution), mouth, source_points=src_points,
                         driving_points=lm)["output"]
        out += list((pred.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    return out


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
    """Write `out`: the clips of `shards` with 512 crops, low-resolution frames rendered by the base model
    (the first `max_frames` frames of each clip when given: a CPU budget)."""
    from litdata import StreamingDataset

    from data_modules.shards import has_hq, load_manifest
    from src.faces.render import LandmarkRenderer
    from src.modules.personalize_module import load_generator
    from src.preprocess import ClipJob, Options, _atomic_write, _encode, pack, work_path

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
    out.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(wanted, indent=1))
    generator = generator.to(device).eval()
    renderer = LandmarkRenderer("contours").to(device)
    work = out / ".work"
    jobs, skipped, datasets = [], 0, {}
    clips = [c for c in manifest["clips"] if splits is None or c["split"] in splits]
    for clip in tqdm(clips, desc="render LQ", unit="clip", dynamic_ncols=True):
        job = ClipJob(clip["split"], clip["identity"], clip["video"], clip["clip"], clip["source"])
        if not clip.get("has_sr"):
            skipped += 1
            continue
        jobs.append(job)
        target = work_path(work, job, ".npz")
        if target.exists():
            continue
        if clip["split"] not in datasets:
            datasets[clip["split"]] = StreamingDataset(str(shards / clip["split"]))
        item = first_frames(datasets[clip["split"]][clip["index"]], max_frames)
        if not has_hq(item):
            skipped += 1
            jobs.pop()
            continue
        lq, offsets = _encode(render_clip(generator, item, resolution, device, renderer), 95)
        meta = {k: v for k, v in clip.items() if k != "index"}
        meta["frames"] = len(item["landmarks"])
        meta["lq"] = {"base_checkpoint": str(base_checkpoint), "resolution": resolution}
        import io

        buf = io.BytesIO()
        np.savez(buf, frames256=lq, offsets256=offsets, frames512=np.frombuffer(item["frames512"], np.uint8),
                 offsets512=item["offsets512"], landmarks=item["landmarks"], align=item["align"],
                 embedding=item["embedding"], frame_index=item["frame_index"],
                 meta_json=np.frombuffer(json.dumps(meta).encode(), np.uint8))
        _atomic_write(target, buf.getvalue())
    if not jobs:
        raise UserError(f"no clip in {shards} has 512-px crops: super-resolution needs them (see preprocessing)")
    settings = {**manifest["settings"], "resolution": resolution}
    opts = Options(**{k: v for k, v in settings.items() if k in Options.__dataclass_fields__})
    result = pack(out, work, jobs, opts, manifest["embedding"])
    result["skipped_without_512"] = skipped
    _atomic_write(out / "manifest.json", json.dumps(result, indent=1).encode())
    return result
