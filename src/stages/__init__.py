"""Stage runners: `python -m src.train STAGE` composes the config, then calls STAGE_RUNNERS[STAGE](cfg, run_dir).

Each runner builds its DataModule, LightningModule and Trainer and fits. Entries are "module:function"
strings so that `--help` and config errors do not import the training stack.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

STAGE_RUNNERS: dict[str, str] = {
    "warp": "src.stages.stage1:run_warp",
    "refine": "src.stages.stage1:run_refine",
    "stage1": "src.stages.stage1:run_stage1",
    "meta": "src.stages.meta:run_meta",
    "sr": "src.stages.sr:run_sr",
}


def stage_runner(stage: str) -> Callable:
    module, func = STAGE_RUNNERS[stage].split(":")  # every stage config has a runner (tests/test_config.py)
    return getattr(importlib.import_module(module), func)
