"""Hyper-parameter sweeps of any stage: with wandb's sweep server, or locally without one.

    python -m src.sweep SWEEP.yaml [--count N] [--local] [-- key=value ...]   (after --: added to every run)
    make sweep SWEEP=lightning_configs/sweeps/meta.yaml [COUNT=N] [LOCAL=1] [ARGS="key=value ..."]

SWEEP.yaml is a plain wandb sweep configuration whose `command` runs `python -m src.train STAGE` with
`${args_no_hyphens}`, so every sampled parameter arrives as a `key=value` override (and reaches every DDP
rank, which re-runs the same command line). Overrides after `--` are added to every run (data.root=...,
trainer.max_time=...). Every parameter is checked against the stage's config before anything starts: a
mistyped key is an error, not a wasted night.

Online (a wandb API key is configured, no --local): the sweep is registered with wandb and an agent runs
--count runs; wandb's controller picks the values (grid, random or bayes) and the runs log into the sweep.

Local (--local, or no API key): no server. Values are drawn here (grid: every combination in order;
random and bayes: seeded random draws, bayes falling back to random), each run is a subprocess of the
same command, logging wherever logger.wandb.mode says (offline without a key). Each finished trial is
written to outputs/sweeps/<name>/trials/<id>.json with its parameters, the metric's last logged value
(from the run's CSV) and its run folder; results.json lists them best first. A re-run skips finished
trials, and an interrupted run resumes from its own checkpoint (same overrides -> same run folder).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import yaml

from src.arguments import Parser
from src.errors import UserError, cli_entry
from src.files import atomic_write_json

ARGS_TOKEN = "${args_no_hyphens}"


def load_sweep(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"sweep file {path} does not exist (see lightning_configs/sweeps/)")
    spec = yaml.safe_load(path.read_text())
    for key in ("command", "parameters", "metric"):
        if key not in spec:
            raise UserError(f"{path}: a sweep needs `{key}`")
    if ARGS_TOKEN not in spec["command"]:
        raise UserError(f"{path}: `command` must pass the parameters with {ARGS_TOKEN}")
    if "src.train" not in spec["command"]:
        raise UserError(f"{path}: `command` must run `-m src.train STAGE`")
    return spec


def stage_of(spec: dict) -> str:
    cmd = spec["command"]
    return cmd[cmd.index("src.train") + 1]


def fixed_args(spec: dict) -> list[str]:
    """The command's own key=value items between the stage and ${args_no_hyphens}."""
    cmd = spec["command"]
    return [c for c in cmd[cmd.index("src.train") + 2 : cmd.index(ARGS_TOKEN)]]


def fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(fmt(v) for v in value) + "]"
    return str(value)


def overrides(params: dict) -> list[str]:
    return [f"{k}={fmt(v)}" for k, v in sorted(params.items())]


def validate(spec: dict, extra: list[str]) -> None:
    """Compose the stage with a value of every parameter: unknown keys and wrong types fail here."""
    from src.config import compose

    first = {k: (p["value"] if "value" in p else p["values"][0] if "values" in p else p.get("min"))
             for k, p in spec["parameters"].items()}
    compose(stage_of(spec), [*fixed_args(spec), *overrides(first), *extra])


def draw(param: dict, rng: random.Random):
    if "value" in param:
        return param["value"]
    if "values" in param:
        return rng.choice(param["values"])
    dist = param.get("distribution")
    lo, hi = param["min"], param["max"]
    if dist is None:
        dist = "int_uniform" if isinstance(lo, int) and isinstance(hi, int) else "uniform"
    if dist == "uniform":
        return rng.uniform(lo, hi)
    if dist == "int_uniform":
        return rng.randint(lo, hi)
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    raise UserError(f"distribution '{dist}' is not supported by the local runner (uniform, int_uniform, "
                    f"log_uniform_values, values); use the wandb server for it")


def local_trials(spec: dict, count: int, seed: int) -> list[dict]:
    params = spec["parameters"]
    if spec.get("method", "random") == "grid":
        for k, p in params.items():
            if "value" not in p and "values" not in p:
                raise UserError(f"grid sweeps need `values` for every parameter ({k} has none)")
        keys = list(params)
        grid = itertools.product(*[[params[k]["value"]] if "value" in params[k] else params[k]["values"] for k in keys])
        return [dict(zip(keys, combo)) for combo in itertools.islice(grid, count)]
    rng = random.Random(seed)
    return [{k: draw(p, rng) for k, p in params.items()} for _ in range(count)]


def metric_of(run_dir: Path, name: str) -> float | None:
    """The last logged value of `name` in the run's CSV logs (the newest file that has the column)."""
    import csv

    files = sorted(run_dir.rglob("csv/metrics.csv"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in files:
        rows = list(csv.DictReader(path.open()))
        values = [r[name] for r in rows if r.get(name) not in (None, "")]
        if values:
            return float(values[-1])
    return None


def run_local(spec: dict, name: str, a: argparse.Namespace) -> list[dict]:
    from src.config import compose, run_dir_of

    out = Path(a.output_root) / "sweeps" / name
    (out / "trials").mkdir(parents=True, exist_ok=True)
    stage, metric = stage_of(spec), spec["metric"]["name"]
    if spec.get("method") == "bayes":
        print("sweep: bayes needs wandb's controller; drawing random values locally", file=sys.stderr)
    for i, params in enumerate(local_trials(spec, a.count, a.seed)):
        args = [*fixed_args(spec), *overrides(params), *a.overrides]
        tid = hashlib.sha1(" ".join(args).encode()).hexdigest()[:10]
        record = out / "trials" / f"{tid}.json"
        if record.exists():
            print(f"sweep: trial {i + 1}/{a.count} ({tid}) finished earlier, skipped")
            continue
        run_dir = run_dir_of(compose(stage, args))
        print(f"sweep: trial {i + 1}/{a.count} ({tid}): {' '.join(overrides(params))}", flush=True)
        code = subprocess.call([sys.executable, "-m", "src.train", stage, *args], env=os.environ.copy())
        if code != 0:  # leave no record: a re-run retries (and resumes) this trial
            print(f"sweep: trial {tid} failed (exit {code}); re-run to retry it", file=sys.stderr)
            continue
        result = {"trial": tid, "params": params, "overrides": args, "run_dir": str(run_dir),
                  metric: metric_of(run_dir, metric)}
        atomic_write_json(record, result)
    results = [json.loads(p.read_text()) for p in (out / "trials").glob("*.json")]
    sign = -1 if spec["metric"].get("goal", "minimize") == "maximize" else 1
    results.sort(key=lambda r: (r[metric] is None, sign * (r[metric] or 0)))
    (out / "results.json").write_text(json.dumps({"sweep": name, "metric": spec["metric"], "trials": results},
                                                 indent=1))
    for r in results:
        print(f"  {r[metric]!s:>12}  {' '.join(overrides(r['params']))}")
    print(f"sweep: results in {out / 'results.json'}")
    return results


def run_wandb(spec: dict, a: argparse.Namespace) -> None:
    import wandb

    from src.config import compose

    cfg = compose(stage_of(spec), [*fixed_args(spec), *a.overrides])
    cmd = list(spec["command"])
    cmd[cmd.index(ARGS_TOKEN) : cmd.index(ARGS_TOKEN)] = a.overrides  # the extra overrides reach every run
    sweep_id = wandb.sweep({**spec, "command": cmd}, project=cfg.logger.wandb.project, entity=cfg.logger.wandb.entity)
    print(f"sweep: {sweep_id}; more agents elsewhere: wandb agent {cfg.logger.wandb.entity or '<entity>'}/"
          f"{cfg.logger.wandb.project}/{sweep_id}")
    wandb.agent(sweep_id, project=cfg.logger.wandb.project, entity=cfg.logger.wandb.entity, count=a.count)


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(prog="python -m src.sweep", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("sweep", type=Path, help="a wandb sweep file (lightning_configs/sweeps/*.yaml)")
    p.add_argument("--count", type=int, default=10, help="runs for this agent (default 10)")
    p.add_argument("--local", action="store_true", help="no wandb server: draw values and run trials here")
    p.add_argument("--seed", type=int, default=0, help="local random draws")
    p.add_argument("--output-root", default="outputs", help="local results go to OUTPUT_ROOT/sweeps/<name>/")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    a = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    a.overrides = extra  # key=value added to every run
    if a.count < 1:
        p.error("--count must be positive")
    return a


@cli_entry
def main(argv=None) -> int:
    from src.loggers import wandb_api_key_configured

    a = parse_args(argv)
    spec = load_sweep(a.sweep)
    validate(spec, a.overrides)
    if a.local or not wandb_api_key_configured():
        if not a.local:
            print("sweep: no wandb API key configured; running locally (see --help)", file=sys.stderr)
        run_local(spec, spec.get("name", a.sweep.stem), a)
    else:
        run_wandb(spec, a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
