"""Evaluate a trained SR run on held-out clips: PSNR, SSIM and temporal warping error of the SR output
versus bicubic upsampling of the same low-resolution input (and the warping error of the ground truth).

    python -m benchmarks.eval_sr --run outputs/sr/evidence [--weights live|ema]

Uses the run's own config and LQ shards (test split = the run's validation split).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from benchmarks.common import save


def main(argv=None) -> None:
    import lightning as L

    from data_modules.voxceleb2 import VoxCeleb2DataModule
    from src.modules.sr_module import TemporalSRModule

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--weights", choices=["live", "ema"], default="live")
    p.add_argument("--name", default="sr_evidence")
    a = p.parse_args(argv)
    ckpt = torch.load(a.run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    cfg = OmegaConf.create(ckpt["hyper_parameters"]["cfg"])
    module = TemporalSRModule(OmegaConf.to_container(cfg, resolve=True), total_steps=1)
    module.load_state_dict(ckpt["state_dict"])
    if a.weights == "ema":
        shadow = next(cb["shadow"] for cb in ckpt["callbacks"].values() if isinstance(cb, dict) and "shadow" in cb)
        module.net.load_state_dict({**module.net.state_dict(), **shadow})
    dm = VoxCeleb2DataModule.from_config(cfg)
    t0 = time.time()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    save(a.name, {
        "command": "python -m benchmarks.eval_sr " + " ".join(argv if argv is not None else sys.argv[1:]),
        "training": json.loads((a.run / "stages.json").read_text())["stages"]["sr"].get("init"),
        "steps": ckpt["global_step"], "weights": a.weights, "split": cfg.data.val_split,
        "windows": f"{cfg.sr.window} frames, {cfg.data.resolution} -> {cfg.model.sr.out_size}",
        # warping errors are ~1e-3: 4 decimals would hide the comparison
        **{k.replace("val/", ""): float(f"{float(v):.5g}") for k, v in sorted(metrics.items())},
        "eval_s": round(time.time() - t0, 1),
    })


if __name__ == "__main__":
    main()
