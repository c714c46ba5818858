"""Train a stage: python -m src.train STAGE [preset=name ...] [key=value ...]

Composes lightning_configs/ (default -> stage -> presets -> command line), writes the resolved config to
outputs/<stage>/<run-name>/config.yaml, seeds everything and hands the run to the stage's trainer
(src/training.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.arguments import Parser
from src.config import CONFIG_DIR, PRESET_GROUPS, compose, list_presets, list_stages
from src.errors import cli_entry


def _describe(path: Path) -> str:
    """The first comment line of a config file, as its one-line description."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def help_text() -> str:
    lines = ["stages:"]
    for s in list_stages():
        lines.append(f"  {s:<12} {_describe(CONFIG_DIR / 'stages' / f'{s}.yaml')}")
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
    p = Parser(
        prog="python -m src.train",
        description="Train one stage of MetaPortrait from composed OmegaConf configs.",
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("stage", help=f"one of: {', '.join(list_stages())}")
    p.add_argument("overrides", nargs="*", help="preset selections (model=tiny) and key=value overrides")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p.parse_args(argv)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_config:
        from src.config import to_yaml

        print(to_yaml(compose(args.stage, args.overrides)), end="")
        return 0
    from src.training import train

    train(args.stage, args.overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
