"""The `meta` stage runner: meta-learning warm-started from a stage-1 generator (or meta.init=PATH).

The run folder's `stages.json` carries the lineage: the stage-1 record it started from, then `meta`.
Re-running the same command resumes from `checkpoints/last.ckpt`; a finished run is not redone.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from data_modules.voxceleb2 import VoxCeleb2DataModule
from src.checkpoints import DISCRIMINATOR, GENERATOR, INNER_LOG_LR, load_weights
from src.lineage import finished_checkpoint, inherit, read_record, record_stage, resolve_start
from src.stages.common import fit, resume_checkpoint, stage_cfg


def run_meta(cfg: DictConfig, run_dir: Path) -> Path:
    from src.modules.meta_module import MetaLearnerModule

    run_dir = Path(run_dir)
    done = finished_checkpoint(run_dir, "meta")
    if done is not None:
        print(f"meta: done earlier ({done}); delete {run_dir} or change a setting to train again")
        return done
    dm = VoxCeleb2DataModule.from_config(cfg)
    module = MetaLearnerModule(stage_cfg(cfg, "meta"), dm.id_dim)
    init = read_record(run_dir)["stages"].get("meta", {}).get("init")
    if resume_checkpoint(run_dir) is None:  # a fresh run: warm start (a resumed one has its own weights)
        init, upstream = resolve_start(cfg.meta.init, cfg.output_root, ("refine",))
        n = load_weights(module, init, GENERATOR, GENERATOR, what="meta.init")
        if module.discriminator is not None:
            load_weights(module, init, DISCRIMINATOR, DISCRIMINATOR)
        if module.inner_log_lr is not None:  # a meta init's learned rates go on; a stage-1 init has none
            load_weights(module, init, INNER_LOG_LR, INNER_LOG_LR, missing_ok=True)
        print(f"meta: {n} generator tensors from {init}")
        inherit(run_dir, upstream)
    record_stage(run_dir, "meta", status="running", run_dir=str(run_dir), init=str(init) if init else None)
    _, last = fit(module, cfg, run_dir, dm, record=(run_dir, "meta"))  # the trainer records `done` (handoff)
    return last
