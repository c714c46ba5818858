"""Stage 1 runners: `warp`, `refine`, and the `stage1` orchestrator (warp, then refine warm-started from
the warp weights) in one run folder.

Every stage resumes: a re-run of the same command continues from its `checkpoints/last.ckpt` (loaded
with weights_only=True); a finished stage is skipped. `stages.json` in the run folder records which
checkpoint fed which stage (src/lineage.py).
"""
from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from data_modules.voxceleb2 import VoxCeleb2DataModule
from src.checkpoints import GENERATOR, WARPER, load_weights
from src.lineage import finished_checkpoint, read_record, record_stage
from src.stages.common import fit, resume_checkpoint, stage_cfg


def run_warp(cfg: DictConfig, run_dir: Path, max_epochs: int | None = None, record=None) -> Path:
    from src.modules.warping_module import WarpingModule

    dm = VoxCeleb2DataModule.from_config(cfg)
    module = WarpingModule(stage_cfg(cfg, "warp"), dm.id_dim)
    _, last = fit(module, cfg, run_dir, dm, max_epochs, record=record)
    return last


def run_refine(cfg: DictConfig, run_dir: Path, init: str | None = None, max_epochs: int | None = None,
               record=None) -> Path:
    from src.modules.refiner_module import RefinerModule

    dm = VoxCeleb2DataModule.from_config(cfg)
    module = RefinerModule(stage_cfg(cfg, "refine"), dm.id_dim)
    init = init or cfg.refine.init
    if init and resume_checkpoint(run_dir) is None:  # warm start only a fresh run
        load_weights(module, init, WARPER, GENERATOR + WARPER, what="refine.init")
    _, last = fit(module, cfg, run_dir, dm, max_epochs, record=record)
    return last


def run_stage1(cfg: DictConfig, run_dir: Path) -> None:
    """warp, then refine warm-started from the warp weights; resumable; recorded in stages.json."""
    init = None
    for stage, epochs in (("warp", cfg.stage1.warp_epochs), ("refine", cfg.stage1.refine_epochs)):
        done = finished_checkpoint(run_dir, stage)
        if done is not None:
            print(f"{stage}: done earlier ({done}), skipped")
            init = str(done)
            continue
        started = read_record(run_dir)["stages"].get(stage, {}).get("started", time.time())
        stage_dir = run_dir / stage
        record_stage(run_dir, stage, status="running", run_dir=str(stage_dir), init=init, started=started)
        sub_cfg = OmegaConf.merge(cfg, {"stage": stage})
        # the trainer marks the stage `done` in run_dir/stages.json when it ends (callbacks/handoff.py)
        last = (run_warp(sub_cfg, stage_dir, epochs, record=(run_dir, stage)) if stage == "warp"
                else run_refine(sub_cfg, stage_dir, init=init, max_epochs=epochs, record=(run_dir, stage)))
        init = str(last)
