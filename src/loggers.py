"""Logger wiring: CSV always, wandb online/offline/disabled.

wandb's mode must be decided before wandb starts in this process (and before Lightning's DDP launcher
re-runs the script on the other ranks, which inherit the environment), so `configure_wandb_env` sets
WANDB_MODE once, early in the entry point.
"""
from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from src.config import CHOICES
from src.errors import ConfigError

WANDB_MODES = CHOICES["logger.wandb.mode"]


def wandb_api_key_configured() -> bool:
    """True when wandb could log online: WANDB_API_KEY, or a `wandb login` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    if mode not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode must be one of {', '.join(WANDB_MODES)}, got '{mode}'")
    if mode == "auto":
        return "online" if wandb_api_key_configured() else "offline"
    return mode


def configure_wandb_env(cfg: DictConfig) -> str:
    """Resolve logger.wandb.mode, export it as WANDB_MODE and record it in the config; returns the mode."""
    mode = resolve_wandb_mode(cfg.logger.wandb.mode)
    os.environ["WANDB_MODE"] = mode
    cfg.logger.wandb.mode = mode
    return mode


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    run_dir = Path(run_dir)
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    mode = resolve_wandb_mode(cfg.logger.wandb.mode)
    if mode == "disabled":
        return loggers
    finish_wandb()  # Lightning would otherwise log into a run left open by an earlier stage in this process
    wb = cfg.logger.wandb
    # A stable id per run folder: a resumed run continues the same wandb run instead of starting a new one (online;
    # an offline run cannot be resumed, and wandb says so on every start if asked to).
    run_id = f"{cfg.stage}-{cfg.run_name}".replace("/", "-")
    run_dir.mkdir(parents=True, exist_ok=True)  # wandb looks for git from here and warns when it is missing
    loggers.append(
        WandbLogger(
            name=f"{cfg.stage}/{cfg.run_name}",
            project=wb.project,
            entity=wb.entity,
            group=wb.group,
            tags=list(wb.tags),
            save_dir=str(run_dir),
            id=run_id,
            resume="allow" if mode == "online" else None,
            mode=mode,
            log_model=wb.log_model,
            config=OmegaConf.to_container(cfg, resolve=True),
        )
    )
    return loggers


def finish_wandb() -> None:
    """Close the process's wandb run, if one is open (each stage gets its own run)."""
    import sys

    wandb = sys.modules.get("wandb")  # never import wandb just to find out nothing is running
    if wandb is not None and wandb.run is not None:
        wandb.finish()
