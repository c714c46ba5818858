"""Every training stage through its real entry point (`python -m src.train STAGE`) under 2-process CPU DDP
(gloo), chained by the orchestrator's records: stage1 (warp -> refine) -> meta -> sr. Also the choice of
the checkpoint a requeued job resumes from."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from src.stages.common import resume_checkpoint
from tests.conftest import REPO


def _train(stage: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "src.train", stage, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_every_stage_under_ddp(shards, tmp_path):
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "model=tiny", "logger=disabled",
           f"data.root={shards}", f"output_root={tmp_path}", "trainer.limit_train_batches=2",
           "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "data.num_workers=0"]
    runs = [("stage1", ["stage1.warp_epochs=1", "stage1.refine_epochs=1", "run_name=s1"], "s1", ["warp", "refine"]),
            ("meta", ["trainer.max_epochs=1", "run_name=m"], "m", ["meta"]),
            ("sr", ["trainer.max_epochs=1", "run_name=sr", "sr.window=3"], "sr", ["sr"])]
    for stage, extra, name, recorded in runs:
        r = _train(stage, *ddp, *extra)
        assert r.returncode == 0, f"{stage}:\n{r.stderr[-4000:]}"
        record = json.loads((tmp_path / stage / name / "stages.json").read_text())["stages"]
        for s in recorded:
            entry = record[s]
            assert entry["status"] == "done" and entry["global_step"] > 0, (s, entry)
            ckpt = torch.load(entry["checkpoint"], map_location="cpu", weights_only=True)
            assert ckpt["global_step"] == entry["global_step"]
    # the chain: meta started from stage 1's refine output, sr rendered its inputs with the meta output
    meta = json.loads((tmp_path / "meta" / "m" / "stages.json").read_text())["stages"]
    sr = json.loads((tmp_path / "sr" / "sr" / "stages.json").read_text())["stages"]
    assert meta["meta"]["init"] == meta["refine"]["checkpoint"]
    assert sr["sr"]["init"] == meta["meta"]["checkpoint"] and list(sr) == ["warp", "refine", "meta", "sr"]


def test_a_requeued_job_resumes_from_the_newest_checkpoint(tmp_path):
    assert resume_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    assert resume_checkpoint(tmp_path) == last
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # what Lightning writes on SLURM's SIGUSR1 before requeueing
    hpc.write_bytes(b"x")
    os.utime(last, (time.time() - 60, time.time() - 60))
    assert resume_checkpoint(tmp_path) == hpc
    os.utime(last, None)
    os.utime(hpc, (time.time() - 60, time.time() - 60))
    assert resume_checkpoint(tmp_path) == last


@pytest.mark.slow
def test_the_torchrun_launch_script_trains_a_stage(shards, tmp_path):
    """scripts/torchrun_train.sh as documented, on one node with 2 CPU processes instead of 8 GPUs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NNODES": "1", "NODE_RANK": "0", "GPUS": "2", "MASTER_PORT": "29533"}
    r = subprocess.run(["bash", "scripts/torchrun_train.sh", "warp", "trainer.accelerator=cpu",
                        "trainer.precision=32-true",
                        "model=tiny", "logger=disabled", f"data.root={shards}", f"output_root={tmp_path}",
                        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.max_epochs=1",
                        "trainer.enable_progress_bar=false", "data.num_workers=0", "run_name=tr"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    ckpt = torch.load(tmp_path / "warp" / "tr" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2  # 2 batches per rank, one optimizer step each: the ranks ran in lockstep


@pytest.mark.slow
def test_a_torchrun_job_continues_a_finished_run(shards, tmp_path):
    """`stage1.continue_from` under torchrun: the launching rank copies the run, the other rank waits for the copy,
    and both train on from it in lockstep."""
    common = ["trainer.accelerator=cpu", "trainer.precision=32-true", "model=tiny", "logger=disabled",
              f"data.root={shards}", f"output_root={tmp_path}", "trainer.limit_train_batches=2",
              "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "data.num_workers=0",
              "stage1.warp_epochs=1"]
    r = _train("stage1", *common, "trainer.devices=1", "stage1.refine_epochs=1", "run_name=first")
    assert r.returncode == 0, r.stderr[-4000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NNODES": "1", "NODE_RANK": "0", "GPUS": "2", "MASTER_PORT": "29534"}
    r = subprocess.run(["bash", "scripts/torchrun_train.sh", "stage1", *common, "stage1.refine_epochs=2",
                        "run_name=more", f"stage1.continue_from={tmp_path / 'stage1' / 'first'}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count("started as a copy of") == 1  # by one rank
    record = json.loads((tmp_path / "stage1" / "more" / "stages.json").read_text())["stages"]
    assert record["refine"]["status"] == "done"
    assert record["refine"]["copied_from"] == str(tmp_path / "stage1" / "first")
    first, more = (torch.load(tmp_path / "stage1" / name / "refine" / "checkpoints" / "last.ckpt", map_location="cpu",
                              weights_only=True) for name in ("first", "more"))
    # one epoch of 2 batches trained on top of the copy, each rank taking one optimizer step per batch
    assert (first["epoch"], more["epoch"]) == (1, 2) and more["global_step"] == first["global_step"] + 2
