"""callbacks/: media logging (run folder + wandb offline), throughput monitoring, the checkpoint hand-off."""
from __future__ import annotations

import json

import pytest
import torch

from callbacks.handoff import CheckpointHandoff
from callbacks.media import MediaLogger, grid, video_frames
from callbacks.throughput import ThroughputMonitor, batch_items
from src.config import compose
from src.loggers import configure_wandb_env
from src.trainer import build_trainer
from src.video_io import probe
from tests.helpers import TinyRegression, regression_loader


class WithMedia(TinyRegression):
    """TinyRegression that also shows pictures and a clip at validation, like the real modules."""

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        if batch_idx == 0:
            g = torch.linspace(0, 1, 16)
            ramp = g[None, None, :].expand(3, 16, 16)
            self.last_val_images = {"a": ramp[None].repeat(2, 1, 1, 1), "b": 1 - ramp[None].repeat(2, 1, 1, 1)}
            self.last_val_video = {"x": torch.stack([ramp.roll(t, dims=2) for t in range(5)]),
                                   "y": torch.stack([ramp.roll(-t, dims=2) for t in range(5)])}


class Boom(TinyRegression):
    def training_step(self, batch, batch_idx):
        if self.global_step == 3:
            raise RuntimeError("simulated crash")
        return super().training_step(batch, batch_idx)


def _trainer(cfg, run_dir, stage="unit"):
    last = run_dir / "checkpoints" / "last.ckpt"
    return build_trainer(cfg, run_dir, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[MediaLogger(run_dir / "media"), ThroughputMonitor(log_every_n_steps=2),
                                    CheckpointHandoff(run_dir, stage, last)])


def test_media_throughput_and_handoff_in_a_real_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = compose("warp", ["model=tiny", "logger=offline", "trainer.max_epochs=2", "trainer.log_every_n_steps=1"])
    configure_wandb_env(cfg)
    run = tmp_path / "run"
    _trainer(cfg, run).fit(WithMedia(), regression_loader(), regression_loader(16, seed=1))
    # media: a grid and a clip per validation, in the run folder and in the wandb run
    pngs, mp4s = sorted((run / "media").glob("*.png")), sorted((run / "media").glob("*.mp4"))
    assert len(pngs) == len(mp4s) == 2
    info = probe(mp4s[0])
    assert info.frames == 5 and (info.width, info.height) == (32, 16)
    wandb_media = list((run / "wandb").glob("offline-run-*/files/media/**/*.*"))
    assert any(p.suffix == ".png" for p in wandb_media) and any(p.suffix == ".mp4" for p in wandb_media)
    # throughput: logged every 2 steps, positive
    header, *rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    col = header.split(",").index("perf/samples_per_s")
    rates = [float(r.split(",")[col]) for r in rows if r.split(",")[col]]
    assert len(rates) == 8 and min(rates) > 0  # 16 steps / 2
    # hand-off: the stage is done, with its checkpoint and the step reached
    entry = json.loads((run / "stages.json").read_text())["stages"]["unit"]
    assert entry["status"] == "done" and entry["checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    assert entry["global_step"] == 16 and (run / "checkpoints" / "last.ckpt").is_file()


def test_handoff_records_an_interrupted_stage(tmp_path):
    cfg = compose("warp", ["model=tiny", "logger=disabled", "trainer.max_epochs=1"])
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(cfg, run, "crashy").fit(Boom(), regression_loader(), regression_loader(16, seed=1))
    entry = json.loads((run / "stages.json").read_text())["stages"]["crashy"]
    assert entry["status"] == "interrupted" and "simulated crash" in entry["error"] and entry["global_step"] == 3


def test_media_helpers_and_batch_counting():
    img = grid({"a": torch.zeros(3, 3, 8, 8), "b": torch.ones(3, 3, 8, 8)}, max_rows=2)
    assert img.shape == (16, 16, 3) and img[:, :8].max() == 0 and img[:, 8:].min() == 255
    frames = video_frames({"a": torch.rand(4, 3, 9, 9)})
    assert len(frames) == 4 and frames[0].shape == (8, 8, 3)  # cropped to even sizes for H.264
    assert batch_items({"x": torch.zeros(5, 2), "names": ["a"] * 5}) == 5
    assert batch_items([torch.zeros(7, 1), torch.zeros(7)]) == 7
