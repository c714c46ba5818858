"""Evaluation the way talking-head papers do it, next to two baselines on the same pairs
(`python -m src.evaluate` is its command line; its --help says what is measured and how)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from src.errors import UserError
from src.files import atomic_write_json, atomic_write_text

METHODS = ("model", "piecewise_affine", "copy_source")
MODES = ("same-identity", "cross-identity")
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
def evaluate(checkpoint: Path, data: Path, split: str = "test", mode: str = "same-identity", max_frames: int = 32,
             batch_size: int = 8, device: str = "auto", identity_backend: str = "auto", mesh_prior: str = "auto",
             progress: bool = True) -> dict:
    """Metrics of the model at `checkpoint` and of the baselines on the clips of `data`/`split` (see src.evaluate).
    mode: same-identity | cross-identity; mesh_prior: auto | on | off (MESH_PRIOR)."""
    from litdata import StreamingDataset
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
    from tqdm import tqdm

    from data_modules.shards import decode_frames, load_manifest
    from src.checkpoints import load_generator
    from src.faces.motion import transfer_motion
    from src.inference import Source, generate, identity_embedder, resolve_device
    from src.metrics.face import akd, cosine, pose_and_expression
    from src.metrics.temporal import warping_error

    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
    if max_frames < 2:
        raise UserError("--max-frames must be at least 2 (the warping error needs consecutive frames)")
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    from src.paths import require_dir, require_file

    require_file(checkpoint, "--checkpoint")
    require_dir(data, "--data")
    device = resolve_device(device)
    generator, cfg, id_dim = load_generator(checkpoint, mesh_prior=MESH_PRIOR[mesh_prior])
    r = cfg["model"]["resolution"]
    manifest = load_manifest(data)
    if split not in manifest["splits"] or not (Path(data) / split).is_dir():
        raise UserError(f"--split {split} is not in {data} (splits: {', '.join(manifest['splits'])})")
    embedder = identity_embedder(identity_backend, id_dim)
    lpips, lpips_why = build_lpips(device) if mode == "same-identity" else (None, "no ground truth across identities")
    make_fid, fid_why = build_fid(device)
    fids = {m: make_fid() for m in METHODS} if make_fid else {}
    landmarker = Landmarker()
    jobs = jobs_for(StreamingDataset(str(Path(data) / split)), mode, max_frames)
    if not jobs:
        raise UserError(f"no clip in {data}/{split} has enough frames to evaluate")
    # per method and metric: (identity, value) of every frame (or clip, for the warping error)
    scores = {m: {k: [] for k, _ in COLUMNS} for m in (*METHODS, "real_driving")}
    found = {m: {} for m in METHODS}  # identity -> [frames with a face, frames]
    t0 = time.time()
    for job in tqdm(jobs, desc=f"evaluate ({mode})", unit="clip", disable=not progress, dynamic_ncols=True):
        person = job["source"]["identity"]
        src_np = decode_frames(job["source"], [0], size=r)[0]
        src_lm = job["source"]["landmarks"][0].astype(np.float32)
        drv_np = decode_frames(job["driving"], job["frames"], size=r)
        drv_lm = job["driving"]["landmarks"][job["frames"]].astype(np.float32)
        targets = drv_lm if mode == "same-identity" else transfer_motion(src_lm, drv_lm, "relative")
        source = Source(src_np, src_lm, job["source"]["embedding"].astype(np.float32))
        outputs = {
            "model": generate(generator, source, targets, device, batch_size, progress=False),
            "piecewise_affine": piecewise_affine(src_np, src_lm, targets),
            "copy_source": [src_np] * len(targets),
        }
        src_found = landmarker(src_np)
        src_emb = embedder(src_np, src_found if src_found is not None else src_lm)
        gt_t = torch.from_numpy(drv_np).permute(0, 3, 1, 2).float().div(255).to(device)
        if mode == "same-identity":
            scores["real_driving"]["warp_error"].append((person, warping_error(drv_np)))
        for method, frames in outputs.items():
            s = scores[method]
            s["warp_error"].append((person, warping_error(np.stack(frames))))
            out_t = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255).to(device)
            if fids:
                fids[method].update(gt_t, real=True)
                fids[method].update(out_t, real=False)
            if mode == "same-identity":
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
    if mode == "cross-identity":
        unavailable.update({k: "no ground truth across identities" for k in ("psnr", "ssim")})
    fid_values = {m: _fid(f) for m, f in fids.items()}
    people = sorted({job["source"]["identity"] for job in jobs})
    return {
        "checkpoint": str(checkpoint), "data": str(data), "split": split, "mode": mode, "resolution": r,
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


REPORT_FILES = ("metrics.json", "metrics.md")


def check_report_folder(output: Path, inputs: dict[str, Path], overwrite: bool = False) -> Path:
    """An error, before any work, unless the report can be written into the folder `output` (src/paths.py) without
    replacing an earlier one (unless overwrite)."""
    from src.paths import check_output

    check_output(output, inputs, kind="folder")
    found = [str(Path(output) / f) for f in REPORT_FILES if (Path(output) / f).exists()]
    if found and not overwrite:
        raise UserError(f"{', '.join(found)} {'exists' if len(found) == 1 else 'exist'}: pass --overwrite to replace, "
                        "or another --output")
    return Path(output)


def write_report(result: dict, output: Path) -> None:
    """output/metrics.json and output/metrics.md, each atomically."""
    atomic_write_json(Path(output) / "metrics.json", result)
    atomic_write_text(Path(output) / "metrics.md", markdown(result))
