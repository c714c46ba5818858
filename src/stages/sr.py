"""The `sr` stage runner: temporal super-resolution.

With `sr.lq=base` (default) the base generator (`sr.init_base`, or the latest finished meta or refine stage
under output_root) renders every frame of the clips with 512-px crops into `sr.lq_root` (by default
`<run>/lq_shards`; resumable; clips without 512 crops are left out and counted), on the device the trainer
trains on; `sr.lq=bicubic` trains on bicubic-degraded real frames instead and needs no base model. The run
folder's stages.json records the lineage (base checkpoint -> sr).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from src.errors import UserError
from src.lineage import finished_checkpoint, inherit, record_stage, resolve_start
from src.stages.common import fit, stage_cfg


def render_device(cfg: DictConfig) -> torch.device:
    """Where this rank renders: its GPU when the trainer trains on GPUs, else the CPU."""
    wants_gpu = cfg.trainer.accelerator in ("gpu",
                                            "cuda") or (cfg.trainer.accelerator == "auto" and torch.cuda.is_available())
    if not wants_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={cfg.trainer.accelerator} but no CUDA device is available here")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def run_sr(cfg: DictConfig, run_dir: Path) -> Path:
    from callbacks.ema import EMA
    from data_modules.voxceleb2 import VoxCeleb2DataModule
    from src.checkpoints import load_generator
    from src.modules.sr_module import TemporalSRModule
    from src.stages.sr_data import render_lq_shards

    run_dir = Path(run_dir)
    done = finished_checkpoint(run_dir, "sr")
    if done is not None:
        print(f"sr: done earlier ({done}); delete {run_dir} or change a setting to train again")
        return done
    base = None
    if cfg.sr.lq == "base":
        base, upstream = resolve_start(cfg.sr.init_base, cfg.output_root, ("meta", "refine"))
        given = "sr.init_base" if cfg.sr.init_base else "the base checkpoint (the latest meta or refine run)"
        base_res = load_generator(base, what=given)[1]["model"]["resolution"]
        if base_res != cfg.data.resolution:
            raise UserError(f"the base checkpoint {base} renders {base_res}x{base_res} frames but this SR model "
                            f"(model.sr.out_size={cfg.model.sr.out_size}) takes {cfg.data.resolution}x"
                            f"{cfg.data.resolution}: use the same model preset for both, or sr.lq=bicubic")
        inherit(run_dir, upstream)
        manifest = render_lq_shards(base, cfg.data.root, cfg.sr.lq_root, device=render_device(cfg),
                                    max_frames=cfg.sr.lq_max_frames)
        print(f"sr: LQ frames of {sum(s['clips'] for s in manifest['splits'].values())} clips rendered by {base} "
              f"({manifest.get('skipped_without_512', 0)} clips without 512 crops left out)")
    dm = VoxCeleb2DataModule.from_config(cfg, root=cfg.sr.lq_root)
    steps = cfg.trainer.max_steps if cfg.trainer.max_steps and cfg.trainer.max_steps > 0 else None
    module = TemporalSRModule(stage_cfg(cfg, "sr"), total_steps=steps)
    record_stage(run_dir, "sr", status="running", run_dir=str(run_dir), init=str(base) if base else None, lq=cfg.sr.lq)
    _, last = fit(module, cfg, run_dir, dm, callbacks=[EMA(cfg.sr.ema_decay)], record=(run_dir, "sr"),
                  gradient_clip_val=cfg.sr.grad_clip_norm)
    return last  # the trainer records `done` in stages.json (callbacks/handoff.py)
