"""Pieces every stage runner shares: weights-only warm starts that name mismatched keys, fit-with-resume,
the `stages.json` lineage record."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from callbacks.handoff import CheckpointHandoff
from callbacks.media import MediaLogger
from callbacks.throughput import ThroughputMonitor
from src.errors import UserError
from src.trainer import build_trainer


def write_json(path: Path, data: dict) -> None:
    """Atomic JSON write, from rank 0 only: under DDP every rank runs the stage runners, and a rank that is
    behind must not write back an older copy of a record that rank 0's trainer has just updated."""
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def load_weights(module: torch.nn.Module, checkpoint: str | Path, src_prefix: str, dst_prefix: str = "",
                 missing_ok: bool = False) -> int:
    """Copy the weights under `src_prefix` of a Lightning checkpoint into `module` (under `dst_prefix`),
    weights only. Missing, unexpected or mis-shaped keys are an error that names them; a checkpoint with no
    weights under `src_prefix` at all is one too, unless missing_ok (then nothing is copied and 0 returned)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" not in state:
        raise UserError(f"{path} is not a Lightning checkpoint (no state_dict)")
    check_mesh_prior(module, state, path)
    source = {dst_prefix + k[len(src_prefix):]: v for k, v in state["state_dict"].items() if k.startswith(src_prefix)}
    target = {k: v for k, v in module.state_dict().items() if k.startswith(dst_prefix)}
    if not source and missing_ok:
        return 0
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


def check_mesh_prior(module: torch.nn.Module, state: dict, path: Path) -> None:
    """A warm start must warp the way its checkpoint was trained: weights of a learned-only flow loaded under the
    mesh prior (or the reverse) would run, silently, as a model nobody trained."""
    from src.modules.personalize_module import mesh_prior_of, require_mesh_prior

    cfg = getattr(module, "cfg", None)
    trained = (state.get("hyper_parameters") or {}).get("cfg")
    if cfg is None or not isinstance(trained, dict) or "model" not in cfg:
        return
    had = str(mesh_prior_of(trained)).lower()
    require_mesh_prior(path, trained, bool(cfg.model.warp.mesh_prior),
                       f": pass model.warp.mesh_prior={had} to continue from it, or start from a checkpoint trained "
                       "like this run")


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest of the stage's `checkpoints/last.ckpt` and the pre-emption checkpoints Lightning writes
    on SLURM's SIGUSR1 before requeueing (`hpc_ckpt_N.ckpt` in the run folder): a requeued job continues
    from the later one."""
    found = [p for p in [Path(run_dir) / "checkpoints" / "last.ckpt", *Path(run_dir).glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def fit(module, cfg: DictConfig, run_dir: Path, datamodule, max_epochs: int | None = None, callbacks=None,
        record: tuple[Path, str] | None = None):
    """fit with resume: a `last.ckpt` in this stage's folder means an interrupted run to continue.
    record=(folder, stage): the stages.json entry the trainer keeps up to date (callbacks/handoff.py);
    by default run_dir/stages.json under the config's stage name."""
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = resume_checkpoint(run_dir)
    overrides = {"gradient_clip_val": None}  # manual optimisation clips inside the modules
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


def read_record(run_dir: Path) -> dict:
    path = Path(run_dir) / "stages.json"
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def record_of_checkpoint(ckpt: Path) -> dict:
    """The stages.json of the run a checkpoint came from: the nearest one among its parent folders that
    names it (stage-1 checkpoints sit one folder deeper, under refine/), or an empty record."""
    for folder in list(Path(ckpt).resolve().parents)[:4]:
        record = read_record(folder)
        if any(Path(e.get("checkpoint", "")).resolve() == Path(ckpt).resolve() for e in record["stages"].values()):
            return record
    return {"stages": {}}


def record_stage(folder: Path, stage: str, **fields) -> dict:
    """Update this stage's entry in folder/stages.json (atomically) and return the whole record."""
    record = read_record(folder)
    entry = record["stages"].setdefault(stage, {})
    entry.update(fields)
    entry.setdefault("started", time.time())
    write_json(Path(folder) / "stages.json", record)
    return record


def latest_generator_checkpoint(output_root: str | Path, stages: tuple[str, ...]) -> tuple[Path, Path]:
    """(checkpoint, its stages.json) of the most recently finished generator stage among `stages` in the
    run folders under output_root (the orchestrators' stages.json files)."""
    best = None
    for record_path in Path(output_root).glob("*/*/stages.json"):
        record = json.loads(record_path.read_text())
        for name in stages:
            entry = record["stages"].get(name, {})
            if entry.get("status") == "done" and Path(entry["checkpoint"]).is_file():
                if best is None or entry["finished"] > best[0]:
                    best = (entry["finished"], Path(entry["checkpoint"]), record_path)
    if best is None:
        raise UserError(f"no finished {' or '.join(stages)} stage under {output_root}/: run it first (make stage1) "
                        f"or give the checkpoint explicitly")
    return best[1], best[2]
