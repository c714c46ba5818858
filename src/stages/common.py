"""What every stage runner shares: fit-with-resume and the config a module is built from."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from callbacks.handoff import CheckpointHandoff
from callbacks.media import MediaLogger
from callbacks.throughput import ThroughputMonitor
from src.trainer import build_trainer


def last_checkpoint(run_dir: Path) -> Path:
    """Where a stage's run folder keeps its latest checkpoint (ModelCheckpoint's save_last, src/trainer.py)."""
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest of the stage's `checkpoints/last.ckpt` and the pre-emption checkpoints Lightning writes
    on SLURM's SIGUSR1 before requeueing (`hpc_ckpt_N.ckpt` in the run folder): a requeued job continues
    from the later one."""
    found = [p for p in [last_checkpoint(run_dir), *Path(run_dir).glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def fit(module, cfg: DictConfig, run_dir: Path, datamodule, max_epochs: int | None = None, callbacks=None,
        record: tuple[Path, str] | None = None, gradient_clip_val: float | None = None):
    """fit with resume: a `last.ckpt` in this stage's folder means an interrupted run to continue (src.training
    checked it before the run folder was touched: check_resume_states).
    record=(folder, stage): the stages.json entry the trainer keeps up to date (callbacks/handoff.py);
    by default run_dir/stages.json under the config's stage name. gradient_clip_val: for a module optimised
    automatically (sr); the manually optimised ones clip inside their training_step, by their stage's
    `grad_clip_norm`."""
    last = last_checkpoint(run_dir)
    resume = resume_checkpoint(run_dir)
    overrides = {"gradient_clip_val": gradient_clip_val, "gradient_clip_algorithm": "norm"}
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs
    record_dir, stage = record or (run_dir, cfg.stage)
    callbacks = [MediaLogger(run_dir / "media"), ThroughputMonitor(), CheckpointHandoff(record_dir, stage, last),
                 *(callbacks or [])]
    trainer = build_trainer(cfg, run_dir, callbacks=callbacks, **overrides)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None, weights_only=True)
    return trainer, last


def stage_cfg(cfg: DictConfig, stage: str) -> dict:
    c = OmegaConf.to_container(cfg, resolve=True)
    c["stage"] = stage
    return c
