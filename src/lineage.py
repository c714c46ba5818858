"""The lineage record: `stages.json` in a run folder says which checkpoint fed which stage.

    {"stages": {"warp": {...}, "refine": {"status": "done", "checkpoint": ".../last.ckpt", "init": ..., ...}, ...}}

Stages chain through it (meta starts from the latest finished refine entry, sr from the latest meta or refine
one). The trainer keeps a stage's entry current (callbacks/handoff.py); a run that starts from another run's
checkpoint first copies that run's entries (`inherit`), so one file tells the whole history. Written atomically
and from rank 0 only: under DDP every rank runs the stage runners, and a rank that is behind must not write back
an older copy of a record that rank 0's trainer has just updated.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from src.errors import UserError
from src.files import atomic_write_json

RECORD = "stages.json"


def read_record(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RECORD
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def write_record(run_dir: str | Path, record: dict) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        atomic_write_json(Path(run_dir) / RECORD, record, indent=2)


def record_stage(folder: str | Path, stage: str, **fields) -> dict:
    """Update this stage's entry in folder/stages.json and return the whole record (`fields` may name the stage's
    own `run_dir`, a sub-folder for stage 1's parts)."""
    record = read_record(folder)
    entry = record["stages"].setdefault(stage, {})
    entry.update(fields)
    entry.setdefault("started", time.time())
    write_record(folder, record)
    return record


def finished_checkpoint(run_dir: str | Path, stage: str) -> Path | None:
    """The checkpoint of `stage` when the record says it finished (a re-run then skips it), else None."""
    entry = read_record(run_dir)["stages"].get(stage, {})
    return Path(entry["checkpoint"]) if entry.get("status") == "done" else None


def moved_record(source_run: str | Path, run_dir: str | Path) -> dict:
    """source_run's record with every path inside source_run moved to run_dir, and each entry saying where it came
    from: the record of a run that starts as a copy of another one."""
    src, dst = Path(source_run).resolve(), Path(run_dir)
    record = read_record(source_run)
    for entry in record["stages"].values():
        for key in ("run_dir", "checkpoint", "init"):
            path = Path(entry[key]).resolve() if isinstance(entry.get(key), str) else None
            if path is not None and path.is_relative_to(src):
                entry[key] = str(dst / path.relative_to(src))
        entry["copied_from"] = str(source_run)
    return record


def inherit(run_dir: str | Path, upstream: dict) -> None:
    """Put the entries of the run this one starts from (its record) in front of this run's own."""
    record = read_record(run_dir)
    record["stages"] = {**upstream["stages"], **record["stages"]}
    write_record(run_dir, record)


def record_of_checkpoint(ckpt: str | Path) -> dict:
    """The stages.json of the run a checkpoint came from: the nearest one among its parent folders that
    names it (stage-1 checkpoints sit one folder deeper, under refine/), or an empty record."""
    for folder in list(Path(ckpt).resolve().parents)[:4]:
        record = read_record(folder)
        if any(Path(e.get("checkpoint", "")).resolve() == Path(ckpt).resolve() for e in record["stages"].values()):
            return record
    return {"stages": {}}


def finished_stages(output_root: str | Path, pattern: str = f"*/*/{RECORD}") -> list[tuple[str, dict, dict]]:
    """(stage, its entry, the whole record) of every finished stage whose checkpoint exists, in the run folders
    under output_root that `pattern` finds (run folders sit at output_root/<stage or experiment>/<run>/)."""
    found = []
    for record_path in sorted(Path(output_root).glob(pattern)):
        try:
            record = json.loads(record_path.read_text())
            stages = record["stages"].items()
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            continue  # a torn or foreign stages.json: not a run this can chain from
        for name, entry in stages:
            if (isinstance(entry, dict) and entry.get("status") == "done" and isinstance(entry.get("checkpoint"), str)
                    and Path(entry["checkpoint"]).is_file()):
                found.append((name, entry, record))
    return found


def latest_checkpoint(output_root: str | Path, stages: tuple[str, ...]) -> tuple[Path, dict]:
    """(checkpoint, the record of its run) of the most recently finished stage among `stages` in the run
    folders under output_root."""
    done = [(entry.get("finished", 0), Path(entry["checkpoint"]), record)
            for name, entry, record in finished_stages(output_root) if name in stages]
    if not done:
        raise UserError(f"no finished {' or '.join(stages)} stage under {output_root}/: run it first (make stage1) "
                        f"or give the checkpoint explicitly")
    return max(done, key=lambda d: d[0])[1:]


def resolve_start(explicit: str | None, output_root: str | Path, stages: tuple[str, ...]) -> tuple[Path, dict]:
    """The checkpoint a stage starts from (`explicit`, or the latest finished one of `stages`) and its run's record."""
    if explicit:
        return Path(explicit), record_of_checkpoint(explicit)
    return latest_checkpoint(output_root, stages)
