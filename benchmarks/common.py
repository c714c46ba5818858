"""Shared by the benchmarks: the machine description and result files."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

RESULTS = Path("outputs/bench")
FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        rows = Path("/proc/meminfo").read_text().splitlines()
        kb = int(next(row for row in rows if row.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}){mem}, {gpu}, torch {torch.__version__}"


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**result, "machine": machine()}, indent=1))
    print(json.dumps(result, indent=1))
    return path


def untrained_generator(path: Path, overrides: list[str], id_dim: int = 128) -> Path:
    """A generator checkpoint of randomly initialised networks (seed 0) for the refine stage composed with
    `overrides` (e.g. ["model=demo"]): what the speed, memory and control benchmarks animate with."""
    import torch
    from omegaconf import OmegaConf

    from src.checkpoints import generator_checkpoint, save_checkpoint
    from src.config import compose
    from src.models.generator import build_generator

    cfg = OmegaConf.to_container(compose("refine", overrides), resolve=True)
    torch.manual_seed(0)
    return save_checkpoint(generator_checkpoint(build_generator(OmegaConf.create(cfg["model"]), id_dim), cfg, id_dim),
                           path)
