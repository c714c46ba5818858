"""Stage 1 runners: `warp`, `refine`, and the `stage1` orchestrator (warp, then refine warm-started from
the warp weights) in one run folder.

Every stage resumes: a re-run of the same command continues from its `checkpoints/last.ckpt` (loaded
with weights_only=True); a finished stage is skipped. `stages.json` in the run folder records which
checkpoint fed which stage.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from callbacks.image_grid import ValidationImageGrid
from data_modules.voxceleb2 import VoxCeleb2DataModule
from src.errors import UserError
from src.trainer import build_trainer


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def load_weights(module: torch.nn.Module, checkpoint: str | Path, src_prefix: str, dst_prefix: str = "") -> int:
    """Copy the weights under `src_prefix` of a Lightning checkpoint into `module` (under `dst_prefix`),
    weights only. Missing, unexpected or mis-shaped keys are an error that names them."""
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" not in state:
        raise UserError(f"{path} is not a Lightning checkpoint (no state_dict)")
    source = {dst_prefix + k[len(src_prefix):]: v for k, v in state["state_dict"].items() if k.startswith(src_prefix)}
    target = {k: v for k, v in module.state_dict().items() if k.startswith(dst_prefix)}
    if not source:
        raise UserError(f"{path} has no '{src_prefix}*' weights: is it a checkpoint of another stage?")
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    shapes = sorted(k for k in set(source) & set(target) if source[k].shape != target[k].shape)
    if missing or unexpected or shapes:
        detail = "; ".join(f"{name}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                           for name, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("shape mismatch", [f"{k} {tuple(source[k].shape)} vs {tuple(target[k].shape)}"
                                                                  for k in shapes])) if keys)
        raise UserError(f"{path} does not fit this model ({detail}); was it trained with another model preset?")
    module.load_state_dict(source, strict=False)
    return len(source)


def _fit(module, cfg: DictConfig, run_dir: Path, datamodule, max_epochs: int | None = None):
    """fit with resume: a `last.ckpt` in this stage's folder means an interrupted run to continue."""
    last = run_dir / "checkpoints" / "last.ckpt"
    overrides = {"gradient_clip_val": None}  # manual optimisation clips inside the modules
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs
    trainer = build_trainer(cfg, run_dir, callbacks=[ValidationImageGrid(run_dir / "media")], **overrides)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None, weights_only=True)
    return trainer, last


def _stage_cfg(cfg: DictConfig, stage: str) -> dict:
    c = OmegaConf.to_container(cfg, resolve=True)
    c["stage"] = stage
    return c


def run_warp(cfg: DictConfig, run_dir: Path, max_epochs: int | None = None) -> Path:
    from src.modules.warping_module import WarpingModule

    dm = VoxCeleb2DataModule.from_config(cfg)
    module = WarpingModule(_stage_cfg(cfg, "warp"), dm.id_dim)
    _, last = _fit(module, cfg, run_dir, dm, max_epochs)
    return last


def run_refine(cfg: DictConfig, run_dir: Path, init: str | None = None, max_epochs: int | None = None) -> Path:
    from src.modules.refiner_module import RefinerModule

    dm = VoxCeleb2DataModule.from_config(cfg)
    module = RefinerModule(_stage_cfg(cfg, "refine"), dm.id_dim)
    init = init or cfg.refine.init
    if init and not (run_dir / "checkpoints" / "last.ckpt").exists():  # warm start only a fresh run
        load_weights(module, init, "warper.", "generator.warper.")
    _, last = _fit(module, cfg, run_dir, dm, max_epochs)
    return last


def run_stage1(cfg: DictConfig, run_dir: Path) -> None:
    """warp, then refine warm-started from the warp weights; resumable; recorded in stages.json."""
    record_path = run_dir / "stages.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"stages": {}}
    plan = [("warp", cfg.stage1.warp_epochs), ("refine", cfg.stage1.refine_epochs)]
    init = None
    for stage, epochs in plan:
        entry = record["stages"].get(stage, {})
        stage_dir = run_dir / stage
        if entry.get("status") == "done":
            print(f"{stage}: done earlier ({entry['checkpoint']}), skipped")
            init = entry["checkpoint"]
            continue
        entry.update(status="running", run_dir=str(stage_dir), init=init, started=entry.get("started", time.time()))
        record["stages"][stage] = entry
        _write_json(record_path, record)
        stage_cfg = OmegaConf.merge(cfg, {"stage": stage})
        last = (run_warp(stage_cfg, stage_dir, epochs) if stage == "warp"
                else run_refine(stage_cfg, stage_dir, init=init, max_epochs=epochs))
        entry.update(status="done", checkpoint=str(last), finished=time.time())
        _write_json(record_path, record)
        init = str(last)
