"""Train a stage: python -m src.train STAGE [preset=name ...] [key=value ...]

Composes lightning_configs/ (default -> stage -> presets -> command line), writes the resolved config to
outputs/<stage>/<run-name>/config.yaml, seeds everything and hands the run to the stage's trainer.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from src.config import CONFIG_DIR, PRESET_GROUPS, compose, list_presets, list_stages, run_dir_of, save_config
from src.errors import UserError, cli_entry
from src.stages import STAGE_RUNNERS, stage_runner


def _describe(path: Path) -> str:
    """The first comment line of a config file, as its one-line description."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def help_text() -> str:
    lines = ["stages:"]
    for s in list_stages():
        mark = "" if s in STAGE_RUNNERS else "  [not implemented yet]"
        lines.append(f"  {s:<12} {_describe(CONFIG_DIR / 'stages' / f'{s}.yaml')}{mark}")
    lines.append("\npresets (select with group=name, defaults in lightning_configs/default.yaml `presets:`):")
    for g in PRESET_GROUPS:
        for name in list_presets(g):
            lines.append(f"  {g + '=' + name:<16} {_describe(CONFIG_DIR / g / f'{name}.yaml')}")
    lines += [
        "\noverrides: any key of the composed config as key=value (YAML values: 3, 1e-4, true, null, [0.9,0.99]).",
        "  Later wins: default.yaml -> stages/STAGE.yaml -> presets -> command line. Unknown keys and wrong",
        "  types are errors. `--print-config` shows every key.",
        "\nexamples:",
        "  python -m src.train warp model=tiny trainer.max_epochs=2",
        "  python -m src.train meta trainer=ddp trainer.devices=8 data.root=/data/vox2_shards",
        "  make train STAGE=warp ARGS='model=demo logger=disabled'",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m src.train",
        description="Train one stage of MetaPortrait from composed OmegaConf configs.",
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("stage", help=f"one of: {', '.join(list_stages())}")
    p.add_argument("overrides", nargs="*", help="preset selections (model=tiny) and key=value overrides")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p.parse_args(argv)


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


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = compose(args.stage, args.overrides)
    if args.print_config:
        from src.config import to_yaml

        print(to_yaml(cfg), end="")
        return 0
    from src.loggers import configure_wandb_env

    configure_wandb_env(cfg)  # before anything can start wandb, and before DDP re-launches this script
    check_data_root(cfg.data.root)
    runner = stage_runner(cfg.stage)
    run_dir = prepare_run_dir(run_dir_of(cfg))
    if is_launch_rank_zero():  # one writer: two ranks renaming one config.yaml.tmp race each other
        save_config(cfg, run_dir)
        print(f"run folder: {run_dir}")  # once per launch, not once per node
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    from src.loggers import finish_wandb

    from src.trainer import close_distributed

    try:
        runner(cfg, run_dir)
    finally:
        finish_wandb()
        close_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
