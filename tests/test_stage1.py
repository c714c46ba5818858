"""Stage 1 training: the LightningModules, the stage runners and the warp -> refine orchestrator."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from data_modules.voxceleb2 import VoxCeleb2DataModule
from src import train
from src.checkpoints import load_weights, read_checkpoint, save_checkpoint
from src.config import compose
from src.errors import UserError
from src.modules.common import generator_inputs
from src.modules.refiner_module import RefinerModule
from src.modules.warping_module import WarpingModule
from tests.conftest import REPO

FAST = ["model=tiny", "logger=disabled", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]


def _module(cls, stage: str, shards, *extra):
    cfg = compose(stage, ["model=tiny", f"data.root={shards}", *extra])
    dm = VoxCeleb2DataModule.from_config(cfg)
    return cls(OmegaConf.to_container(cfg, resolve=True), dm.id_dim), dm


def _metrics(run_dir):
    header, *rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    cols = header.split(",")
    return [dict(zip(cols, r.split(","))) for r in rows]


def test_train_cli_warp_then_resume(shards, tmp_path):
    args = ["warp", *FAST, f"data.root={shards}", f"output_root={tmp_path}", "run_name=r"]
    assert train.main([*args, "trainer.max_epochs=1"]) == 0
    ckpt = tmp_path / "warp" / "r" / "checkpoints" / "last.ckpt"
    first = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert first["global_step"] == 3
    # the same run folder asked for a second epoch continues from step 3 instead of starting over
    assert train.main([*args, "trainer.max_epochs=2"]) == 0
    second = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert second["global_step"] == 6
    steps = [int(m["step"]) for m in _metrics(tmp_path / "warp" / "r") if m.get("train/loss")]
    assert steps == sorted(steps) and max(steps) >= 4
    val = [m for m in _metrics(tmp_path / "warp" / "r") if m.get("val/psnr")]
    assert val and all(float(m["val/psnr_copy_source"]) > 5 for m in val)


def test_stage1_orchestrator_records_and_skips(shards, tmp_path):
    args = ["stage1", *FAST, f"data.root={shards}", f"output_root={tmp_path}", "run_name=s",
            "stage1.warp_epochs=1", "stage1.refine_epochs=1"]
    assert train.main(args) == 0
    run = tmp_path / "stage1" / "s"
    record = json.loads((run / "stages.json").read_text())["stages"]
    assert record["warp"]["status"] == record["refine"]["status"] == "done"
    assert record["refine"]["init"] == record["warp"]["checkpoint"]
    assert list((run / "refine" / "media").glob("val_step*.png"))
    before = (run / "refine" / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    assert train.main(args) == 0  # finished stages are not redone
    assert (run / "refine" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before


def test_a_finished_stage_trains_on_and_a_run_can_continue_another(shards, tmp_path):
    """Asked for more epochs, a finished refine trains on from its last checkpoint; `stage1.continue_from` starts a
    new run as a copy of a finished one that then trains on, leaving the original as it was. Both end with the
    weights of a run trained for all the epochs in one go (the meta evidence's control is stage 1 trained on)."""
    from src.training import train as train_stage

    common = ["stage1", *FAST, f"data.root={shards}", f"output_root={tmp_path}", "trainer.limit_val_batches=0",
              "data.augment=true", "stage1.warp_epochs=1"]
    runs = tmp_path / "stage1"

    def refine(name: str) -> dict:
        return read_checkpoint(runs / name / "refine" / "checkpoints" / "last.ckpt")

    assert train.main([*common, "run_name=whole", "stage1.refine_epochs=3"]) == 0
    assert train.main([*common, "run_name=short", "stage1.refine_epochs=1"]) == 0
    assert train.main([*common, "run_name=short", "stage1.refine_epochs=2"]) == 0  # trains on: 1 -> 2
    assert refine("short")["epoch"] == 2
    short = refine("short")["state_dict"]
    assert train.main([*common, "run_name=copy", "stage1.refine_epochs=3",
                       f"stage1.continue_from={runs / 'short'}"]) == 0  # a copy of `short`, trained on: 2 -> 3
    assert refine("short")["epoch"] == 2 and all(torch.equal(v, refine("short")["state_dict"][k])
                                                 for k, v in short.items())  # the original is untouched
    whole, copy = refine("whole"), refine("copy")
    assert copy["epoch"] == whole["epoch"] == 3 and copy["global_step"] == whole["global_step"]
    assert all(torch.equal(v, copy["state_dict"][k]) for k, v in whole["state_dict"].items())
    record = json.loads((runs / "copy" / "stages.json").read_text())["stages"]
    assert record["refine"]["status"] == "done" and record["refine"]["copied_from"] == str(runs / "short")
    assert (runs / "copy").resolve() in Path(record["refine"]["checkpoint"]).resolve().parents
    assert Path(record["refine"]["init"]).resolve() == (runs / "copy" / "warp" / "checkpoints" / "last.ckpt")

    with pytest.raises(UserError, match="refine has already started"):  # warp trained on under a finished refine
        train_stage("stage1", [*common[1:], "run_name=short", "stage1.warp_epochs=2", "stage1.refine_epochs=2"])
    with pytest.raises(UserError, match="not a finished stage-1 run"):
        train_stage("stage1", [*common[1:], "run_name=other", f"stage1.continue_from={tmp_path / 'nothing'}"])


def test_a_seed_reproduces_a_training_run(shards, tmp_path):
    """The same command twice (augmentations on, loader workers included) gives bit-identical weights."""
    weights = []
    for name in ("a", "b"):
        assert train.main(["warp", *FAST, f"data.root={shards}", f"output_root={tmp_path}", f"run_name={name}",
                           "trainer.max_epochs=1", "trainer.limit_val_batches=0", "data.augment=true",
                           "data.num_workers=2", "seed=7"]) == 0
        weights.append(read_checkpoint(tmp_path / "warp" / name / "checkpoints" / "last.ckpt")["state_dict"])
    a, b = weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_warm_start_copies_warp_weights_and_names_mismatches(shards, tmp_path):
    warp, _ = _module(WarpingModule, "warp", shards)
    ckpt = tmp_path / "warp.ckpt"
    save_checkpoint({"state_dict": warp.state_dict()}, ckpt)
    refine, _ = _module(RefinerModule, "refine", shards)
    n = load_weights(refine, ckpt, "warper.", "generator.warper.")
    assert n == len(warp.warper.state_dict())
    for k, v in warp.warper.state_dict().items():
        assert torch.equal(refine.generator.warper.state_dict()[k], v)
    bigger, _ = _module(RefinerModule, "refine", shards, "model.warp.code_dim=64")
    with pytest.raises(UserError, match="shape mismatch.*code_dim|shape mismatch"):
        load_weights(bigger, ckpt, "warper.", "generator.warper.")
    with pytest.raises(UserError, match="another stage"):
        load_weights(refine, ckpt, "generator.", "generator.")
    # optional weights (a meta init's learned rates): absent is not an error, and nothing changes
    before = {k: v.clone() for k, v in refine.state_dict().items()}
    assert load_weights(refine, ckpt, "generator.", "generator.", missing_ok=True) == 0
    assert all(torch.equal(v, refine.state_dict()[k]) for k, v in before.items())


def test_refiner_step_updates_both_networks_and_lowers_the_loss(shards):
    torch.manual_seed(0)
    module, dm = _module(RefinerModule, "refine", shards, "optim.lr=1e-3")
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    (opt_g, opt_d), _ = module.configure_optimizers()
    g0 = [p.detach().clone() for p in module.generator.parameters()]
    d0 = [p.detach().clone() for p in module.discriminator.parameters()]
    losses, _ = module.model_step(batch)
    before = sum(losses.values())
    # the training step's own recipe, outside a Trainer
    from src.losses.gan import lsgan_discriminator_loss

    out = module.generator(**generator_inputs(batch))
    losses = module.generator_losses(batch, out, adversarial=True)
    real, _ = module.discriminator(batch["driving"], batch["driving_lmk_img"])
    fake, _ = module.discriminator(out["output"].detach(), batch["driving_lmk_img"])
    (sum(losses.values()) + lsgan_discriminator_loss(real, fake)).backward()
    opt_g.step()
    opt_d.step()
    assert any(not torch.equal(a, b) for a, b in zip(g0, module.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, module.discriminator.parameters()))
    with torch.no_grad():
        after = sum(module.model_step(batch)[0].values())
    assert after < before


def test_nonfinite_losses_are_skipped_then_stop_the_run(shards, tmp_path, monkeypatch):
    module, dm = _module(WarpingModule, "warp", shards)
    monkeypatch.setattr(module.perceptual, "forward", lambda a, b: torch.tensor(float("nan")))
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", max_steps=30, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False)
    before = [p.detach().clone() for p in module.warper.parameters()]
    with pytest.raises(UserError, match="non-finite losses in a row"):
        trainer.fit(module, datamodule=dm)
    assert module.guard.skipped == module.guard.max_consecutive
    assert all(torch.equal(a, b) for a, b in zip(before, module.warper.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["warp", "refine"])
def test_ddp_fast_dev_run_keeps_ranks_identical(shards, tmp_path, stage):
    r = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "ddp_stage1.py"), str(shards), str(tmp_path),
                        stage], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["step"] > 0
    assert ranks[0]["hash"] == ranks[1]["hash"]  # gradients were averaged: both ranks hold the same weights


def test_identity_loss_needs_weights_then_trains_with_them(shards, tmp_path):
    with pytest.raises(UserError, match="loss.identity_weights"):
        _module(RefinerModule, "refine", shards, "refine.identity_weight=20.0")
    from src.models.iresnet import build_iresnet

    weights = tmp_path / "backbone.pth"
    torch.save(build_iresnet("r18", width=8).state_dict(), weights)
    module, dm = _module(RefinerModule, "refine", shards, "refine.identity_weight=20.0",
                         f"loss.identity_weights={weights}", "loss.identity_arch=r18")
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    losses, out = module.model_step(batch, adversarial=False)
    assert losses["identity"] > 0
    losses["identity"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.generator.refiner.parameters())
    assert not any(k.startswith("identity") for k in module.state_dict())  # the recogniser is not checkpointed


def test_refine_counts_one_global_step_per_batch(shards):
    """G and D both step per batch; Lightning would count both (issue #17958): max_steps=3 would train 1.5 batches."""
    import lightning as L

    module, dm = _module(RefinerModule, "refine", shards)
    d_before = [p.detach().clone() for p in module.discriminator.parameters()]
    batches = []
    counter = L.Callback()
    counter.on_train_batch_end = lambda trainer, *_: batches.append(trainer.global_step)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False, callbacks=[counter])
    trainer.fit(module, datamodule=dm)
    assert batches == [1, 2, 3] and trainer.global_step == 3
    assert not all(torch.equal(a, b) for a, b in zip(d_before, module.discriminator.parameters()))  # D stepped
    assert trainer.optimizers[1].state[next(module.discriminator.parameters())]["step"] == 3


def test_bf16_mixed_precision_steps(shards):
    import lightning as L

    module, dm = _module(RefinerModule, "refine", shards)
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", fast_dev_run=2, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    assert module.guard.skipped == 0 and trainer.global_step > 0
    assert all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.parametrize("stage", ["warp", "meta"])
def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(stage, shards, tiny_generator_ckpt, tmp_path,
                                                                           monkeypatch):
    """Stopped after its second epoch's checkpoint, a run started again by the same command ends with the weights of
    a run never stopped, bit for bit: it goes on with the data of the epochs it had not seen (the DataModule's epoch
    count is in the checkpoint). Before, the data restarted at the first epoch's."""
    from src.modules.meta_module import MetaLearnerModule
    from src.training import train as train_stage

    args = ["model=tiny", "logger=disabled", f"data.root={shards}", f"output_root={tmp_path}", "data.augment=true",
            "trainer.limit_train_batches=2", "trainer.limit_val_batches=0", "trainer.max_epochs=3",
            "checkpoint.every_n_train_steps=2", "trainer.enable_progress_bar=false", "data.num_workers=0"]
    if stage == "meta":
        args += [f"meta.init={tiny_generator_ckpt}", "meta.support_frames=4", "meta.inner_steps=2",
                 "meta.learn_inner_lr=true"]
    train_stage(stage, [*args, "run_name=whole"])

    def stop_at_the_third_epoch(self):
        if self.trainer.current_epoch == 2:
            raise KeyboardInterrupt  # Lightning's graceful shutdown: the checkpoints written so far stay

    module = MetaLearnerModule if stage == "meta" else WarpingModule
    with monkeypatch.context() as m:
        m.setattr(module, "on_train_epoch_start", stop_at_the_third_epoch)
        with pytest.raises(SystemExit):
            train_stage(stage, [*args, "run_name=stopped"])
    last = tmp_path / stage / "stopped" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 4
    train_stage(stage, [*args, "run_name=stopped"])
    whole = read_checkpoint(tmp_path / stage / "whole" / "checkpoints" / "last.ckpt")
    resumed = read_checkpoint(last)
    assert resumed["global_step"] == whole["global_step"] == 6
    assert whole["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(shards, tmp_path):
    """SIGKILL a training process once it has written a checkpoint; the same command continues from it."""
    import os
    import signal
    import time

    cmd = [sys.executable, "-m", "src.train", "warp", "model=demo", "logger=disabled", f"data.root={shards}",
           f"output_root={tmp_path}", "run_name=k", "trainer.max_steps=16", "trainer.max_epochs=-1",
           "checkpoint.every_n_train_steps=4", "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false",
           "trainer.log_every_n_steps=1"]
    ckpt = tmp_path / "warp" / "k" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # let the checkpoint file be complete
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < saved < 16, "the run was killed before it finished"
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Restoring states from the checkpoint" in r.stdout + r.stderr  # resumed, not restarted
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 16
