"""Sweeps: the repository's sweep files are valid for their stages, and a local sweep runs real trainings
with the sampled overrides, records the metric and skips finished trials on a re-run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from src import sweep
from src.config import CONFIG_DIR

SWEEPS = sorted((CONFIG_DIR / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_repository_sweeps_are_valid(path):
    spec = sweep.load_sweep(path)
    assert spec["command"][-1] == "${args_no_hyphens}" and "${interpreter}" in spec["command"]
    sweep.validate(spec, [])  # every parameter is a key of the stage's config, with a valid value
    trials = sweep.local_trials(spec, 3, seed=0)
    assert len(trials) == 3 and all(set(t) == set(spec["parameters"]) for t in trials)


def test_mistyped_parameter_fails_before_anything_runs(tmp_path, capsys):
    spec = yaml.safe_load(SWEEPS[0].read_text())
    spec["parameters"]["optim.lrr"] = {"values": [0.1]}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    assert sweep.main([str(bad), "--local", "--output-root", str(tmp_path)]) == 2
    assert "optim.lrr" in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.slow
def test_local_sweep_runs_trials_and_resumes(shards, tmp_path, capsys):
    spec = {
        "name": "unit", "method": "random", "metric": {"name": "val/psnr", "goal": "maximize"},
        "parameters": {"optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                       "data.batch_size": {"values": [2]}},
        "command": ["${env}", "${interpreter}", "-m", "src.train", "warp", "trainer.max_epochs=1",
                    "${args_no_hyphens}"],
    }
    path = tmp_path / "unit.yaml"
    path.write_text(yaml.safe_dump(spec))
    extra = ["model=tiny", "logger=disabled", f"data.root={shards}", f"output_root={tmp_path / 'runs'}",
             "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
             "data.num_workers=0"]
    argv = [str(path), "--local", "--count", "2", "--output-root", str(tmp_path), "--", *extra]
    assert sweep.main(argv) == 0
    results = json.loads((tmp_path / "sweeps" / "unit" / "results.json").read_text())
    trials = results["trials"]
    assert len(trials) == 2 and trials[0]["params"]["optim.lr"] != trials[1]["params"]["optim.lr"]
    assert all(isinstance(t["val/psnr"], float) for t in trials)
    assert trials[0]["val/psnr"] >= trials[1]["val/psnr"]  # best first
    for t in trials:  # each run really used its sampled value
        cfg = yaml.safe_load((Path(t["run_dir"]) / "config.yaml").read_text())
        assert cfg["optim"]["lr"] == pytest.approx(t["params"]["optim.lr"])
    capsys.readouterr()
    assert sweep.main(argv) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 2
