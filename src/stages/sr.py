"""The `sr` stage runner: render low-resolution inputs with the latest base generator, then train TemporalSR.

    make sr ARGS="..."   (= python -m src.train sr ...)

With `sr.lq=base` (default) the base checkpoint (`sr.init_base`, or the most recently finished meta or
refine stage under output_root) renders every frame of the clips with 512-px crops into
`<run>/lq_shards` (resumable; clips without 512 crops are left out and counted); `sr.lq=bicubic` trains on
bicubic-degraded real frames instead and needs no base model. The run folder's stages.json records the
lineage (base checkpoint -> sr).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.errors import UserError
from src.stages.common import (fit, latest_generator_checkpoint, read_record, record_of_checkpoint, record_stage,
                               stage_cfg, write_json)


def resolve_base(cfg: DictConfig) -> tuple[Path, dict]:
    if cfg.sr.init_base:
        path = Path(cfg.sr.init_base)
        return path, record_of_checkpoint(path)
    ckpt, record_path = latest_generator_checkpoint(cfg.output_root, ("meta", "refine"))
    return ckpt, read_record(record_path.parent)


def run_sr(cfg: DictConfig, run_dir: Path) -> Path:
    from callbacks.ema import EMA
    from data_modules.voxceleb2 import VoxCeleb2DataModule
    from src.modules.personalize_module import load_generator
    from src.modules.sr_module import TemporalSRModule
    from src.stages.sr_data import render_lq_shards

    run_dir = Path(run_dir)
    entry = read_record(run_dir)["stages"].get("sr", {})
    if entry.get("status") == "done":
        print(f"sr: done earlier ({entry['checkpoint']}); delete {run_dir} or change a setting to train again")
        return Path(entry["checkpoint"])
    lq_res = cfg.model.sr.out_size // cfg.model.sr.scale
    data_root, base = cfg.data.root, None
    if cfg.sr.lq == "base":
        base, upstream = resolve_base(cfg)
        base_res = load_generator(base)[1]["model"]["resolution"]
        if base_res != lq_res:
            raise UserError(f"the base checkpoint {base} renders {base_res}x{base_res} frames but this SR model "
                            f"(model.sr.out_size={cfg.model.sr.out_size}) takes {lq_res}x{lq_res}: use the same model preset "
                            f"for both, or sr.lq=bicubic")
        record = read_record(run_dir)
        record["stages"] = {**upstream["stages"], **record["stages"]}
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "stages.json", record)
        manifest = render_lq_shards(base, cfg.data.root, run_dir / "lq_shards", max_frames=cfg.sr.lq_max_frames)
        data_root = str(run_dir / "lq_shards")
        print(f"sr: LQ frames of {sum(s['clips'] for s in manifest['splits'].values())} clips rendered by {base} "
              f"({manifest.get('skipped_without_512', 0)} clips without 512 crops left out)")
    elif cfg.sr.lq != "bicubic":
        raise UserError(f"sr.lq must be base or bicubic, got '{cfg.sr.lq}'")
    cfg = OmegaConf.merge(cfg, {"data": {"root": data_root, "resolution": lq_res, "mode": "windows"}})
    dm = VoxCeleb2DataModule.from_config(cfg)
    steps = cfg.trainer.max_steps if cfg.trainer.max_steps and cfg.trainer.max_steps > 0 else None
    module = TemporalSRModule(stage_cfg(cfg, "sr"), total_steps=steps)
    record_stage(run_dir, "sr", status="running", run_dir=str(run_dir), init=str(base) if base else None, lq=cfg.sr.lq)
    _, last = fit(module, cfg, run_dir, dm, callbacks=[EMA(cfg.sr.ema_decay)], record=(run_dir, "sr"))
    return last  # the trainer records `done` in stages.json (callbacks/handoff.py)
