"""Stage 1 runners: `warp`, `refine`, and the `stage1` orchestrator (warp, then refine warm-started from
the warp weights) in one run folder.

Every stage resumes: a re-run of the same command continues from its `checkpoints/last.ckpt` (loaded
with weights_only=True); a finished stage is skipped, or trains on when asked for more epochs than it has.
`stages.json` in the run folder records which checkpoint fed which stage (src/lineage.py).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from data_modules.voxceleb2 import VoxCeleb2DataModule
from src.checkpoints import GENERATOR, WARPER, load_weights, read_checkpoint
from src.errors import UserError
from src.lineage import finished_checkpoint, moved_record, read_record, record_stage, write_record
from src.stages.common import fit, last_checkpoint, resume_checkpoint, stage_cfg
from src.training import is_launch_rank_zero


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


def copy_run(source: Path, run_dir: Path) -> None:
    """Start run_dir as a copy of the finished stage-1 run `source`: its parts' last checkpoints and its record
    (paths moved to run_dir). Written by the launching rank; under torchrun the other ranks wait for the record."""
    if is_launch_rank_zero():
        if read_record(source)["stages"].get("refine", {}).get("status") != "done":
            raise UserError(f"stage1.continue_from: {source} is not a finished stage-1 run (its stages.json has no "
                            "finished refine)")
        record = moved_record(source, run_dir)
        copies = {stage: (last_checkpoint(source / stage), last_checkpoint(run_dir / stage))
                  for stage in ("warp", "refine")}
        for stage, (original, copy) in copies.items():
            named = Path(record["stages"].get(stage, {}).get("checkpoint", ""))
            if named.resolve() != copy.resolve() or not original.is_file():
                raise UserError(f"stage1.continue_from: {original} is missing or its stages.json names checkpoints "
                                "outside it (written from another working folder, or moved since)")
        for original, copy in copies.values():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(original, copy)
        write_record(run_dir, record)
        print(f"started as a copy of {source}")
        return
    deadline = time.time() + 600
    while not read_record(run_dir)["stages"]:
        if time.time() > deadline:
            raise UserError(f"rank 0 did not copy {source} into {run_dir} within 10 minutes")
        time.sleep(1)


def run_stage1(cfg: DictConfig, run_dir: Path) -> None:
    """warp, then refine warm-started from the warp weights; resumable; recorded in stages.json. A finished part
    asked for more epochs than it has trains on from its last checkpoint."""
    if cfg.stage1.continue_from and not read_record(run_dir)["stages"]:
        copy_run(Path(cfg.stage1.continue_from), run_dir)
    init = None
    for stage, epochs in (("warp", cfg.stage1.warp_epochs), ("refine", cfg.stage1.refine_epochs)):
        done = finished_checkpoint(run_dir, stage)
        if done is not None:
            trained = read_checkpoint(done, mmap=True, what=f"the finished {stage} checkpoint")["epoch"]
            if trained >= epochs:
                print(f"{stage}: done earlier ({done}, {trained} epochs), skipped")
                init = str(done)
                continue
            if stage == "warp" and "refine" in read_record(run_dir)["stages"]:
                raise UserError(f"stage1.warp_epochs={epochs} asks the finished warp ({trained} epochs) to train on, "
                                "but refine has already started from it: use another run_name")
            print(f"{stage}: {trained} epochs done earlier, training on to {epochs}")
        started = read_record(run_dir)["stages"].get(stage, {}).get("started", time.time())
        stage_dir = run_dir / stage
        record_stage(run_dir, stage, status="running", run_dir=str(stage_dir), init=init, started=started)
        sub_cfg = OmegaConf.merge(cfg, {"stage": stage})
        # the trainer marks the stage `done` in run_dir/stages.json when it ends (callbacks/handoff.py)
        last = (run_warp(sub_cfg, stage_dir, epochs, record=(run_dir, stage)) if stage == "warp"
                else run_refine(sub_cfg, stage_dir, init=init, max_epochs=epochs, record=(run_dir, stage)))
        init = str(last)
