"""Training one stage from a composed config (`python -m src.train STAGE` is its command line).

compose (default -> stage -> presets -> overrides) -> the resolved config written to
<output_root>/<stage>/<run_name>/config.yaml -> seed -> the stage's runner (src/stages/).
"""
from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from pathlib import Path

from src.config import compose, run_dir_of, save_config
from src.errors import UserError


def is_launch_rank_zero() -> bool:
    """Whether this process is global rank 0 of a torchrun, Lightning or SLURM launch (True when not distributed).
    Files written before the Trainer exists come from this process only: every rank runs this script."""
    return all(int(os.environ.get(k, 0)) == 0 for k in ("RANK", "NODE_RANK", "LOCAL_RANK", "SLURM_PROCID"))


def prepare_run_dir(run_dir: Path) -> Path:
    """Create the run folder and prove it is writable, with an actionable error otherwise."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # a probe of this process's own: ranks that shared one name removed each other's (a launch-time race)
        probe = run_dir / f".write_test.{socket.gethostname()}.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"cannot write the run folder {run_dir} ({exc.strerror}); pass output_root=A_WRITABLE_FOLDER"
        ) from None
    return run_dir


def check_data_root(root: str) -> None:
    if not Path(root).is_dir():
        raise UserError(
            f"data.root '{root}' does not exist: preprocess videos into it (python -m src.preprocess "
            f"--input VIDEOS --output {root}) or pass data.root=PATH_TO_SHARDS"
        )


def check_resume_states(run_dir: Path) -> None:
    """A one-line error for a damaged resume checkpoint of this run (its stages' folders included), before the run
    folder is touched: a refused re-run leaves it as it was."""
    from src.checkpoints import check_resumable
    from src.stages.common import resume_checkpoint

    for folder in [run_dir, *sorted(p for p in run_dir.iterdir() if p.is_dir())]:
        resume = resume_checkpoint(folder)
        if resume is not None:
            check_resumable(resume)


def train(stage: str, overrides: Iterable[str] = ()) -> Path:
    """Train `stage` with command-line style `overrides` (preset selections and key=value); the run folder.
    A re-run of the same call resumes, and a finished stage is not redone."""
    from src.loggers import configure_wandb_env, finish_wandb
    from src.stages import stage_runner
    from src.trainer import close_distributed

    cfg = compose(stage, list(overrides))
    configure_wandb_env(cfg)  # before anything can start wandb, and before DDP re-launches this script
    check_data_root(cfg.data.root)
    runner = stage_runner(cfg.stage)
    run_dir = prepare_run_dir(run_dir_of(cfg))
    check_resume_states(run_dir)
    if is_launch_rank_zero():  # one writer: two ranks renaming one config.yaml race each other
        save_config(cfg, run_dir)
        print(f"run folder: {run_dir}")  # once per launch, not once per node
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        runner(cfg, run_dir)
    finally:
        finish_wandb()
        close_distributed()
    return run_dir
