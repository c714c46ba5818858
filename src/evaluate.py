"""Evaluate a generator the way talking-head papers do, next to two baselines on the same pairs.

    python -m src.evaluate --checkpoint CKPT --data SHARDS [--split test]
                           [--mode same-identity|cross-identity] --output DIR

Pairs, from preprocessed shards (python -m src.preprocess): for every clip of the split, source = its
first frame; driving = its next --max-frames frames (same-identity, the real frames are the ground truth),
or the frames of a clip of another identity whose motion is transferred relative to its first frame
(cross-identity, as src.animate's default; there is no ground truth).

Methods: the model; copy-the-source-frame; a classical piecewise-affine warp of the source along the
MediaPipe mesh to the target landmarks (no learning at all).

Metrics: PSNR, SSIM, LPIPS (same-identity only); FID of each method's frames against the real frames of the
evaluated clips; CSIM (cosine similarity of identity embeddings of output and source, with the backend the
checkpoint was trained with) and the paper's ID loss, 1 - CSIM; AKD, AED, APD on MediaPipe landmarks (see
src/metrics/face.py for their definitions); the temporal warping error of consecutive outputs
(src/metrics/temporal.py), also of the real driving frames. Outputs without a detectable face are left out of
the landmark and identity metrics and counted. LPIPS and FID need torchvision, torch-fidelity and downloaded
weights (`pip install -e ".[metrics]"` where torchvision installs beside torch, see the README); without them
they are reported as unavailable with the reason, never as 0.

Written: DIR/metrics.json (overall and per identity) and DIR/metrics.md (Markdown tables).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from src.errors import UserError, cli_entry
from src.preprocess import _atomic_write

METHODS = ("model", "piecewise_affine", "copy_source")
MESH_PRIOR = {"auto": None, "on": True, "off": False}  # --mesh-prior: as trained, or required
COLUMNS = [("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"), ("lpips", "LPIPS ↓"), ("fid", "FID ↓"), ("csim", "CSIM ↑"),
           ("id_loss", "ID loss ↓"), ("akd", "AKD px ↓"), ("aed", "AED ↓"), ("apd", "APD ° ↓"),
           ("warp_error", "warp err ↓"), ("face_found", "face found")]


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}" if str(exc) else type(exc).__name__


def build_lpips(device):
    """(LPIPS metric or None, why it is unavailable)."""
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(device).eval(), None
    except Exception as exc:  # torchvision missing, weights not downloadable offline, ...
        return None, _why(exc)


def build_fid(device):
    """(a function making one FID metric per method, or None, why it is unavailable). torchmetrics' FID runs
    torch-fidelity's Inception v3, whose weights it downloads on first use."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        FrechetInceptionDistance(feature=2048, normalize=True)  # fails early without torch-fidelity or weights
        return lambda: FrechetInceptionDistance(feature=2048, normalize=True).to(device), None
    except Exception as exc:
        return None, _why(exc)


class Landmarker:
    """MediaPipe on evaluated images (static mode: every image on its own), upsized to >= 256 px first."""

    def __init__(self):
        from src.faces.landmarks import FaceMesh

        self.mesh = FaceMesh(static=True)

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        import cv2

        if rgb.shape[0] < 256:
            rgb = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_CUBIC)
        faces = self.mesh(np.ascontiguousarray(rgb))
        return faces[0] if faces else None


def piecewise_affine(source: np.ndarray, src_lm: np.ndarray, targets: np.ndarray) -> list[np.ndarray]:
    """The source warped along the mesh triangles (far to near) onto each target landmark set."""
    from src.faces.piecewise_affine import PiecewiseAffineWarper
    from src.faces.topology import tessellation_triangles

    r = source.shape[0]
    warper, tris = PiecewiseAffineWarper(r, r, map_scale=0.5), tessellation_triangles()
    out = []
    for lm in targets:
        order = np.argsort(-lm[tris, 2].mean(1))  # painter's order by depth
        out.append(warper.warp(source, src_lm[:, :2] * r, lm[:, :2] * r, tris[order]))
    return out


def jobs_for(ds, mode: str, max_frames: int) -> list[dict]:
    """One job per clip: which item is the source and which frames drive it."""
    from data_modules.shards import num_frames

    items = [ds[i] for i in range(len(ds))]
    identities = [it["identity"] for it in items]
    jobs = []
    for i, item in enumerate(items):
        if mode == "same-identity":
            n = min(num_frames(item) - 1, max_frames)
            if n >= 2:
                jobs.append({"source": item, "driving": item, "frames": list(range(1, n + 1))})
            continue
        others = [j for k in range(1, len(items)) if identities[j := (i + k) % len(items)] != identities[i]]
        if not others:
            raise UserError("cross-identity evaluation needs clips of at least two identities in the split")
        drv = items[others[0]]
        jobs.append({"source": item, "driving": drv, "frames": list(range(0, min(num_frames(drv), max_frames)))})
    return jobs


@torch.no_grad()
def evaluate(a: argparse.Namespace) -> dict:
    from litdata import StreamingDataset
    from tqdm import tqdm
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from data_modules.shards import decode_frames, load_manifest
    from src.animate import Source, generate, identity_embedder
    from src.faces.motion import transfer_motion
    from src.metrics.face import akd, cosine, pose_and_expression
    from src.metrics.temporal import warping_error
    from src.modules.personalize_module import load_generator
    from src.personalize import resolve_device

    device = resolve_device(a.device)
    generator, cfg, id_dim = load_generator(a.checkpoint, mesh_prior=MESH_PRIOR[a.mesh_prior])
    r = cfg["model"]["resolution"]
    manifest = load_manifest(a.data)
    if a.split not in manifest["splits"] or not (Path(a.data) / a.split).is_dir():
        raise UserError(f"--split {a.split} is not in {a.data} (splits: {', '.join(manifest['splits'])})")
    embedder = identity_embedder(a.identity_backend, id_dim)
    lpips, lpips_why = build_lpips(device) if a.mode == "same-identity" else (None, "no ground truth across identities")
    make_fid, fid_why = build_fid(device)
    fids = {m: make_fid() for m in METHODS} if make_fid else {}
    landmarker = Landmarker()
    jobs = jobs_for(StreamingDataset(str(Path(a.data) / a.split)), a.mode, a.max_frames)
    if not jobs:
        raise UserError(f"no clip in {a.data}/{a.split} has enough frames to evaluate")
    # per method and metric: (identity, value) of every frame (or clip, for the warping error)
    scores = {m: {k: [] for k, _ in COLUMNS} for m in (*METHODS, "real_driving")}
    found = {m: {} for m in METHODS}  # identity -> [frames with a face, frames]
    t0 = time.time()
    for job in tqdm(jobs, desc=f"evaluate ({a.mode})", unit="clip", disable=a.quiet, dynamic_ncols=True):
        person = job["source"]["identity"]
        src_np = decode_frames(job["source"], [0], size=r)[0]
        src_lm = job["source"]["landmarks"][0].astype(np.float32)
        drv_np = decode_frames(job["driving"], job["frames"], size=r)
        drv_lm = job["driving"]["landmarks"][job["frames"]].astype(np.float32)
        targets = drv_lm if a.mode == "same-identity" else transfer_motion(src_lm, drv_lm, "relative")
        source = Source(None, None, src_np, src_lm, job["source"]["embedding"].astype(np.float32), 1)
        outputs = {
            "model": generate(generator, source, targets, device, a.batch_size, progress=False),
            "piecewise_affine": piecewise_affine(src_np, src_lm, targets),
            "copy_source": [src_np] * len(targets),
        }
        src_found = landmarker(src_np)
        src_emb = embedder(src_np, src_found if src_found is not None else src_lm)
        gt_t = torch.from_numpy(drv_np).permute(0, 3, 1, 2).float().div(255).to(device)
        if a.mode == "same-identity":
            scores["real_driving"]["warp_error"].append((person, warping_error(drv_np)))
        for method, frames in outputs.items():
            s = scores[method]
            s["warp_error"].append((person, warping_error(np.stack(frames))))
            out_t = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255).to(device)
            if fids:
                fids[method].update(gt_t, real=True)
                fids[method].update(out_t, real=False)
            if a.mode == "same-identity":
                for i in range(len(frames)):
                    o, g = out_t[i : i + 1], gt_t[i : i + 1]
                    s["psnr"].append((person, float(peak_signal_noise_ratio(o, g, data_range=1.0))))
                    s["ssim"].append((person, float(structural_similarity_index_measure(o, g, data_range=1.0))))
                    if lpips is not None:
                        s["lpips"].append((person, float(lpips(o, g))))
            count = found[method].setdefault(person, [0, 0])
            for i, frame in enumerate(frames):
                lm = landmarker(frame)
                count[1] += 1
                if lm is None:
                    continue
                count[0] += 1
                s["akd"].append((person, akd(lm, targets[i], r)))
                apd, aed = pose_and_expression(lm, drv_lm[i])
                s["apd"].append((person, apd))
                s["aed"].append((person, aed))
                s["csim"].append((person, cosine(embedder(frame, lm), src_emb)))
    unavailable = {} if lpips is not None else {"lpips": lpips_why}
    if not fids:
        unavailable["fid"] = fid_why
    if a.mode == "cross-identity":
        unavailable.update({k: "no ground truth across identities" for k in ("psnr", "ssim")})
    fid_values = {m: _fid(f) for m, f in fids.items()}
    people = sorted({job["source"]["identity"] for job in jobs})
    return {
        "checkpoint": str(a.checkpoint), "data": str(a.data), "split": a.split, "mode": a.mode, "resolution": r,
        "mesh_prior": generator.mesh_prior,
        "clips": len(jobs), "pairs": sum(len(j["frames"]) for j in jobs), "identity_backend": embedder.name,
        "metrics": summarise(scores, found, unavailable, fid_values),
        "per_identity": {p: summarise(scores, found, unavailable, None, p) for p in people},
        "unavailable": unavailable, "seconds": round(time.time() - t0, 1),
        "notes": "AKD/AED/APD on MediaPipe's 468-point mesh (src/metrics/face.py); comparable between the rows "
                 "here, not with numbers from papers. ID loss = 1 - CSIM (the paper's). FID over all evaluated "
                 "frames against the real frames of the same clips (only in the overall table; a handful of "
                 "frames makes it noisy). real_driving: the real frames' own temporal warping error.",
    }


def _fid(metric) -> float | str:
    try:
        return round(float(metric.compute()), 3)
    except Exception as exc:  # e.g. fewer than 2 frames
        return f"unavailable ({_why(exc)})"


def summarise(scores: dict, found: dict, unavailable: dict, fid: dict | None, person: str | None = None) -> dict:
    """One row per method: the mean of each metric over all frames, or over one identity's frames."""
    table = {}
    for method in (*METHODS, "real_driving"):
        row = {}
        for key, _ in COLUMNS:
            values = [v for who, v in scores[method][key] if person is None or who == person]
            if method == "real_driving" and key != "warp_error":
                continue
            if key in unavailable:
                row[key] = "unavailable"
            elif key == "face_found":
                hits = [c for who, c in found[method].items() if person is None or who == person]
                row[key] = round(sum(h for h, _ in hits) / max(1, sum(n for _, n in hits)), 4)
            elif key == "fid":
                if fid is not None and method in fid:
                    row[key] = fid[method]
            elif values:
                row[key] = round(float(np.mean(values)), 5 if key == "warp_error" else 4)
        if "csim" in row:
            row["id_loss"] = round(1 - row["csim"], 4)
        table[method] = {k: row[k] for k, _ in COLUMNS if k in row}
    return table


def markdown(result: dict) -> str:
    lines = [f"# Evaluation: {result['mode']}, split `{result['split']}`", "",
             f"Checkpoint `{result['checkpoint']}`, data `{result['data']}`, {result['resolution']} px, "
             f"{result['clips']} clips, {result['pairs']} pairs, identity backend {result['identity_backend']}.", "",
             "| method | " + " | ".join(h for _, h in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for method, row in result["metrics"].items():
        cells = [str(row.get(k, "–")) for k, _ in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    per_identity = result.get("per_identity") or {}
    if per_identity:
        columns = [(k, h) for k, h in COLUMNS if k not in ("fid", "lpips") and k not in result["unavailable"]]
        lines += ["", "Per identity:", "", "| identity | method | " + " | ".join(h for _, h in columns) + " |",
                  "|---|---|" + "---|" * len(columns)]
        for person, table in per_identity.items():
            for method in METHODS:
                cells = [str(table.get(method, {}).get(k, "–")) for k, _ in columns]
                lines.append(f"| {person} | {method} | " + " | ".join(cells) + " |")
    if result["unavailable"]:
        lines += ["", "Unavailable: " + "; ".join(f"{k}: {v}" for k, v in result["unavailable"].items())]
    lines += ["", result["notes"], ""]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m src.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("--checkpoint", required=True, type=Path, help="generator checkpoint (refine, meta or personalize)")
    p.add_argument("--data", required=True, type=Path, help="preprocessed shards (with manifest.json)")
    p.add_argument("--split", default="test")
    p.add_argument("--mode", choices=["same-identity", "cross-identity"], default="same-identity")
    p.add_argument("--output", required=True, type=Path, help="folder for metrics.json and metrics.md")
    p.add_argument("--max-frames", type=int, default=32, help="driving frames per clip (consecutive)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--identity-backend", default="auto", choices=["auto", "insightface", "dlib"])
    p.add_argument("--mesh-prior", choices=list(MESH_PRIOR), default="auto",
                   help="auto: run the checkpoint as it was trained; on/off: require a checkpoint trained with/without "
                        "the mesh prior (an error otherwise), for ablation tables that must not mix the two")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.max_frames < 2:
        p.error("--max-frames must be at least 2 (the warping error needs consecutive frames)")
    return a


@cli_entry
def main(argv=None) -> int:
    a = parse_args(argv)
    result = evaluate(a)
    a.output.mkdir(parents=True, exist_ok=True)
    _atomic_write(a.output / "metrics.json", json.dumps(result, indent=1).encode())
    _atomic_write(a.output / "metrics.md", markdown(result).encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
