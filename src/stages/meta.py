"""The `meta` stage runner: meta-learning warm-started from a stage-1 generator (or meta.init=PATH).

The run folder's `stages.json` carries the lineage: the stage-1 record it started from, then `meta`.
Re-running the same command resumes from `checkpoints/last.ckpt`; a finished run is not redone.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from data_modules.voxceleb2 import VoxCeleb2DataModule
from src.stages.common import (fit, latest_generator_checkpoint, load_weights, read_record, record_of_checkpoint,
                               record_stage, resume_checkpoint, stage_cfg, write_json)


def resolve_init(cfg: DictConfig) -> tuple[Path, dict]:
    """The checkpoint to start from and the record of the run that produced it (empty if it has none)."""
    if cfg.meta.init:
        path = Path(cfg.meta.init)
        record = record_of_checkpoint(path)
        return path, record
    ckpt, record_path = latest_generator_checkpoint(cfg.output_root, ("refine",))
    return ckpt, read_record(record_path.parent)


def run_meta(cfg: DictConfig, run_dir: Path) -> Path:
    from src.modules.meta_module import MetaLearnerModule

    run_dir = Path(run_dir)
    entry = read_record(run_dir)["stages"].get("meta", {})
    if entry.get("status") == "done":
        print(f"meta: done earlier ({entry['checkpoint']}); delete {run_dir} or change a setting to train again")
        return Path(entry["checkpoint"])
    dm = VoxCeleb2DataModule.from_config(cfg)
    module = MetaLearnerModule(stage_cfg(cfg, "meta"), dm.id_dim)
    init = Path(entry["init"]) if entry.get("init") else None
    if resume_checkpoint(run_dir) is None:  # a fresh run: warm start (a resumed one has its own weights)
        init, upstream = resolve_init(cfg)
        n = load_weights(module, init, "generator.", "generator.")
        if module.discriminator is not None:
            load_weights(module, init, "discriminator.", "discriminator.")
        if module.inner_log_lr is not None:  # a meta init's learned rates go on; a stage-1 init has none
            load_weights(module, init, "inner_log_lr", "inner_log_lr", missing_ok=True)
        print(f"meta: {n} generator tensors from {init}")
        record = read_record(run_dir)
        record["stages"] = {**upstream["stages"], **record["stages"]}
        write_json(run_dir / "stages.json", record)
    record_stage(run_dir, "meta", status="running", run_dir=str(run_dir), init=str(init) if init else None)
    _, last = fit(module, cfg, run_dir, dm, record=(run_dir, "meta"))  # the trainer records `done` (handoff)
    return last
