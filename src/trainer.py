"""Build a Lightning Trainer from the `trainer:` section of a composed config."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf

from src.loggers import build_loggers


def checkpoint_callback(cfg: DictConfig, run_dir: Path) -> ModelCheckpoint:
    """Checkpoints by steps when `checkpoint.every_n_train_steps` is set, otherwise every
    `checkpoint.every_minutes` of training (Lightning allows one of the two), and at the end."""
    ck = cfg.checkpoint
    when = ({"every_n_train_steps": ck.every_n_train_steps} if ck.every_n_train_steps
            else {"train_time_interval": timedelta(minutes=ck.every_minutes)})
    # No version counter: `last.ckpt` is the file resumes and the lineage record name. A run continued from a
    # copy of another (stage1.continue_from) would otherwise write `last-v1.ckpt` beside the copied one.
    return ModelCheckpoint(dirpath=str(Path(run_dir) / "checkpoints"), save_last=ck.save_last,
                           save_top_k=ck.keep_top_k, enable_version_counter=False, **when)


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list[Callback] | None = None,
                  **overrides: Any) -> L.Trainer:
    """A Trainer with the configured loggers, a checkpoint callback in run_dir/checkpoints and
    the given extra callbacks; keyword overrides win over cfg.trainer."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs.update(overrides)
    if kwargs.get("strategy") == "ddp":
        # Our buffers are constants (StyleGAN2 noise, the frozen identity net's BatchNorm statistics), synced
        # once when DDP wraps the model. Re-broadcasting them in every forward is a collective, and a
        # validation split with fewer clips than ranks leaves a rank with no batch: that rank would never
        # join it and the run would hang. Metrics are synced at epoch end instead, with any batch counts.
        kwargs["strategy"] = DDPStrategy(broadcast_buffers=False)
    return L.Trainer(
        default_root_dir=str(run_dir),
        logger=build_loggers(cfg, run_dir),
        callbacks=[checkpoint_callback(cfg, run_dir), *(callbacks or [])],
        **kwargs,
    )


def close_distributed() -> None:
    """Tear down the process group when training is over. Lightning does this at exit for NCCL only; a gloo
    (CPU DDP) group left to interpreter teardown can abort a finished run ('terminate called without an
    active exception', exit code -6), seen in the CPU DDP tests."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
