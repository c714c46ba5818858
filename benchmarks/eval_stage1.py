"""Stage-1 evidence: same-identity reconstruction on held-out identities.

For every clip of a split: source = the clip's first frame, driving = every `--every`-th frame; PSNR and
SSIM of the refined output, of the warped source alone and of the copy-the-source baseline, averaged over
all pairs. Also the validation curve from the run's CSV logs.

    python -m benchmarks.eval_stage1 --run outputs/stage1/evidence --shards outputs/bench/shards_fixtures
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from litdata import StreamingDataset
from omegaconf import OmegaConf
from torchmetrics.functional.image import peak_signal_noise_ratio as psnr
from torchmetrics.functional.image import structural_similarity_index_measure as ssim

from benchmarks.common import save
from data_modules.guidance import render_guidance, to_float
from data_modules.shards import decode_frames, num_frames
from src.checkpoints import GENERATOR, load_weights, read_checkpoint
from src.faces.render import LandmarkRenderer
from src.models.generator import build_generator
from src.modules.common import generator_inputs


def load_generator(checkpoint: Path):
    hp = read_checkpoint(checkpoint)["hyper_parameters"]
    cfg = OmegaConf.create(hp["cfg"])
    gen = build_generator(cfg.model, hp["id_dim"])
    load_weights(gen, checkpoint, GENERATOR, "")
    return gen.eval(), cfg


@torch.no_grad()
def reconstruction_scores(gen, cfg, shards: Path, split: str, every: int, batch: int = 8) -> dict:
    r = cfg.model.resolution
    renderer = LandmarkRenderer()
    ds = StreamingDataset(str(shards / split))
    scores = {k: [] for k in ("psnr", "ssim", "psnr_warped", "ssim_warped", "psnr_copy_source", "ssim_copy_source")}
    for i in range(len(ds)):
        item = ds[i]
        idx = list(range(1, num_frames(item), every))
        for start in range(0, len(idx), batch):
            chunk = idx[start : start + batch]
            frames = torch.from_numpy(decode_frames(item, [0] + chunk, size=r)).permute(0, 3, 1, 2)
            lms = torch.from_numpy(item["landmarks"][[0] + chunk].astype(np.float32))
            n = len(chunk)
            b = {"source": frames[:1].expand(n, -1, -1, -1), "driving": frames[1:],
                 "source_landmarks": lms[:1].expand(n, -1, -1), "driving_landmarks": lms[1:],
                 "embedding": torch.from_numpy(item["embedding"].copy())[None].expand(n, -1)}
            render_guidance(to_float(b), renderer, r)
            out = gen(**generator_inputs(b))
            for name, img in (("", out["output"]), ("_warped", out["warped"]), ("_copy_source", b["source"])):
                for j in range(n):
                    scores["psnr" + name].append(psnr(img[j : j + 1].clamp(0, 1), b["driving"][j : j + 1],
                                                      data_range=1.0).item())
                    scores["ssim" + name].append(ssim(img[j : j + 1].clamp(0, 1), b["driving"][j : j + 1],
                                                      data_range=1.0).item())
    return {k: round(float(np.mean(v)), 3) for k, v in scores.items()} | {"pairs": len(scores["psnr"]),
                                                                          "clips": len(ds)}


def curve(run: Path) -> list[dict]:
    rows = []
    for stage in ("warp", "refine"):
        path = run / stage / "csv" / "metrics.csv"
        if path.exists():
            for row in csv.DictReader(path.open()):
                if row.get("val/psnr"):
                    rows.append({"stage": stage, "epoch": int(row["epoch"]), "step": int(row["step"]),
                                 "val_psnr": round(float(row["val/psnr"]), 2), "val_ssim": round(float(row["val/ssim"]),
                                                                                                 4)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a stage1 run folder (with stages.json)")
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--every", type=int, default=2)
    a = p.parse_args(argv)
    stages = json.loads((a.run / "stages.json").read_text())["stages"]
    ckpt = Path(stages["refine"].get("checkpoint") or a.run / "refine" / "checkpoints" / "last.ckpt")
    gen, cfg = load_generator(ckpt)
    t0 = time.time()
    result = reconstruction_scores(gen, cfg, a.shards, a.split, a.every)
    wall = {k: round(v["finished"] - v["started"], 1) for k, v in stages.items() if "finished" in v}
    save("stage1_evidence", {
        "command": f"python -m benchmarks.eval_stage1 --run {a.run} --shards {a.shards}",
        "training": f"python -m src.train stage1 model=demo data.root={a.shards} stage1.warp_epochs=20 "
                    "stage1.refine_epochs=20",
        "resolution": cfg.model.resolution, "split": a.split, "training_wall_s": wall, **result,
        "eval_s": round(time.time() - t0, 1),
    })
    (a.run / "val_curve.json").write_text(json.dumps(curve(a.run), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
