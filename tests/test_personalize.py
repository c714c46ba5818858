"""`python -m src.personalize`: a real fixture clip through preprocessing, fine-tuning and the outputs."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from src import personalize
from src.checkpoints import load_generator, save_checkpoint
from src.errors import UserError
from src.personalization import heldout_loss
from src.video_io import probe
from tests.conftest import REPO, _faceless_video


@pytest.fixture(scope="module")
def clip(fixtures_dir):
    return sorted((fixtures_dir / "voxceleb2_mini" / "test" / "mp4").glob("*/*/*.mp4"))[0]


def _args(ckpt, video, out, *extra):
    return ["--checkpoint", str(ckpt), "--video", str(video), "--output", str(out), "--batch-size", "2",
            "--max-eval-frames", "4", "--identity-backend", "dlib", *extra]


@pytest.fixture(scope="module")
def personalized(tiny_generator_ckpt, clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("personal") / "me.ckpt"
    code = personalize.main(_args(tiny_generator_ckpt, clip, out, "--steps", "24", "--eval-every", "8", "--lr", "3e-3",
                                  "--heldout-fraction", "0.3"))
    assert code == 0
    return out


def test_personalize_writes_checkpoint_report_and_preview(personalized, tiny_generator_ckpt):
    out, folder = personalized, personalized.parent
    generator, cfg, id_dim = load_generator(out)  # loadable with weights_only, by the same code as any generator
    assert id_dim == 128 and cfg["model"]["resolution"] == 64
    ckpt = torch.load(out, weights_only=True)
    assert len(ckpt["personalized"]["embedding"]) == 128 and ckpt["personalized"]["steps"] == 24
    report = json.loads((folder / "me.report.json").read_text())
    assert report["steps"] == 24 and report["stopped_by"] == "steps"
    for when in ("before", "after"):
        h = report["heldout"][when]
        assert h["frames"] == 4 and 5 < h["psnr"] < 60 and 0 < h["ssim"] <= 1 and -1 <= h["identity_similarity"] <= 1
    assert report["heldout_frames"] > 0 and report["train_frames"] > 2 * report["heldout_frames"]
    # one validation source per clip, a training frame (typical by default)
    (source_frame,) = report["source_frames"].values()
    assert 0 <= source_frame < report["train_frames"]
    start = load_generator(tiny_generator_ckpt)[0]
    assert not all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), generator.state_dict().values()))
    preview = probe(folder / "me.preview.mp4")
    assert preview.frames == 4 and preview.width == 3 * 64
    assert not (folder / "me.work" / "checkpoints").exists()  # finished: resume state removed


def test_fine_tuning_lowers_the_heldout_loss(personalized, tiny_generator_ckpt):
    from data_modules.personal import PersonalVideoDataModule
    from src.modules.personalize_module import PersonalizeModule

    logs = sorted((personalized.parent / "me.work" / "logs").rglob("metrics.csv"))[-1].read_text().splitlines()
    col = logs[0].split(",").index("val/loss")
    assert len([r for r in logs[1:] if r.split(",")[col]]) == 3  # measured every 8 of 24 steps
    train_col = logs[0].split(",").index("train/loss")
    assert len([r for r in logs[1:] if r.split(",")[train_col]]) == 3  # the training loss logged beside it
    dm = PersonalVideoDataModule(str(personalized.parent / "me.work" / "shards"), resolution=64, batch_size=2,
                                 heldout_fraction=0.3, id_dim=128)
    dm.setup()
    loss = {}
    for name, path in (("start", tiny_generator_ckpt), ("personal", personalized)):
        gen, cfg, id_dim = load_generator(path)
        loss[name] = heldout_loss(PersonalizeModule(cfg, id_dim, 1e-3, gen), dm, torch.device("cpu"))
    # 24 steps at 3e-3 gain about 0.016 on this clip, 40x the run-to-run spread (12 steps at 1e-3 gained 0 to 0.006,
    # which CPU nondeterminism could flip)
    assert loss["personal"] < loss["start"]


def test_learned_rates_of_a_meta_checkpoint_are_applied_and_carried_on(tiny_generator_ckpt, clip, tmp_path):
    # a checkpoint whose learned multipliers all but freeze the warp network: fine-tuning must leave it in place
    state = torch.load(tiny_generator_ckpt, map_location="cpu", weights_only=True)
    names = [k[len("generator."):] for k in state["state_dict"] if k.startswith("generator.")]
    trainable = {n for n, _ in load_generator(tiny_generator_ckpt)[0].named_parameters()}
    state["inner_lr_scale"] = {n: (1e-6 if n.startswith("warper.") else 1.0) for n in names if n in trainable}
    save_checkpoint(state, tmp_path / "meta.ckpt")
    out = tmp_path / "me.ckpt"
    assert personalize.main(_args(tmp_path / "meta.ckpt", clip, out, "--steps", "4", "--eval-every", "4", "--lr",
                                  "1e-3")) == 0
    start, tuned = load_generator(tmp_path / "meta.ckpt")[0], load_generator(out)[0]
    moved = {n: float((a - b).abs().max()) for (n, a), (_, b) in zip(start.named_parameters(),
                                                                     tuned.named_parameters())}
    assert max(v for n,
               v in moved.items() if n.startswith("warper.")) < 1e-6  # 4 Adam steps of at most 1e-3 * 1e-6 * 0.1
    assert max(v for n, v in moved.items() if n.startswith("refiner.")) > 1e-4
    report = json.loads((tmp_path / "me.report.json").read_text())
    assert report["learned_lr_scale"]["min"] == 0.0 and report["learned_lr_scale"]["max"] == 1.0  # 4 decimals
    assert torch.load(out, weights_only=True)["inner_lr_scale"] == state["inner_lr_scale"]


def test_existing_output_is_kept_without_overwrite(personalized, tiny_generator_ckpt, clip):
    before = personalized.stat().st_mtime_ns
    with pytest.raises(UserError, match="--overwrite"):
        personalize.personalize(personalize.parse_options(_args(tiny_generator_ckpt, clip, personalized, "--steps",
                                                                "2")))
    assert personalized.stat().st_mtime_ns == before


def test_bad_inputs_give_clear_errors_and_write_nothing(tiny_generator_ckpt, clip, tmp_path):
    faceless = tmp_path / "noface.mp4"
    _faceless_video(faceless)
    out = tmp_path / "x.ckpt"
    with pytest.raises(UserError, match="no usable face"):
        personalize.personalize(personalize.parse_options(_args(tiny_generator_ckpt, faceless, out)))
    with pytest.raises(UserError, match="too few to hold out"):
        personalize.personalize(personalize.parse_options(_args(tiny_generator_ckpt, clip, out, "--heldout-fraction",
                                                                "0.95")))
    warp_only = tmp_path / "warp.ckpt"
    save_checkpoint({"state_dict": {"warper.a": torch.zeros(1)}, "hyper_parameters": {"cfg": {}, "id_dim": 128}},
                    warp_only)
    with pytest.raises(UserError, match="warp-stage checkpoint"):
        personalize.personalize(personalize.parse_options(_args(warp_only, clip, out)))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="is not a torch checkpoint"):
        personalize.personalize(personalize.parse_options(_args(junk, clip, out)))
    assert not out.exists() and not (tmp_path / "x.report.json").exists() and not (tmp_path / "x.preview.mp4").exists()
    assert personalize.main(_args(tiny_generator_ckpt, tmp_path / "missing.mp4", out)) == 2
    # learned rates of another generator: refused before the video is even preprocessed
    state = torch.load(tiny_generator_ckpt, map_location="cpu", weights_only=True)
    state["inner_lr_scale"] = {"warper.not_a_tensor": 2.0}
    save_checkpoint(state, tmp_path / "other_rates.ckpt")
    with pytest.raises(UserError, match="do not name this generator"):
        personalize.personalize(personalize.parse_options(_args(tmp_path / "other_rates.ckpt", clip,
                                                                tmp_path / "y.ckpt")))
    assert not (tmp_path / "y.work").exists()


@pytest.mark.slow
def test_killed_personalization_resumes(tiny_generator_ckpt, clip, tmp_path):
    out = tmp_path / "k.ckpt"
    cmd = [sys.executable, "-m", "src.personalize", *_args(tiny_generator_ckpt, clip, out, "--steps", "16",
                                                           "--eval-every", "4")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "k.work" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    assert last.exists() and not out.exists()
    saved_step = torch.load(last, weights_only=True)["global_step"]
    assert 0 < saved_step < 16
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "k.report.json").read_text())
    assert report["steps"] == 16
    # the resumed run continued from saved_step: its CSV log has no training rows before it
    logs = sorted((tmp_path / "k.work" / "logs").rglob("metrics.csv"))
    steps = [int(row.split(",")[1]) for row in logs[-1].read_text().splitlines()[1:]]
    assert min(steps) >= saved_step - 1


def test_an_interrupted_personalization_resumes_to_the_weights_of_an_uninterrupted_one(tiny_generator_ckpt, clip,
                                                                                       tmp_path):
    from lightning.pytorch.callbacks import Callback

    class StopAt(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 7:  # past the step-4 checkpoint: steps 5-7 are done again after the resume
                raise KeyboardInterrupt

    def run(out, callbacks=()):
        options = personalize.parse_options(_args(tiny_generator_ckpt, clip, out, "--steps", "12", "--eval-every", "4",
                                                  "--lr", "3e-3", "--heldout-fraction", "0.3"))
        return personalize.personalize(options, callbacks=callbacks)

    whole = run(tmp_path / "whole.ckpt")
    with pytest.raises(SystemExit):  # Lightning ends a Ctrl-C with exit status 1, the resume state kept
        run(tmp_path / "split.ckpt", [StopAt()])
    assert torch.load(tmp_path / "split.work" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    resumed = run(tmp_path / "split.ckpt")
    assert resumed["steps"] == whole["steps"] == 12
    # the resumed run fine-tunes on the batches the uninterrupted one saw from step 5 on, not on its first ones again
    assert resumed["best_heldout_loss"] == whole["best_heldout_loss"]
    a, b = (load_generator(tmp_path / f"{name}.ckpt")[0].state_dict() for name in ("whole", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)
