"""Super-resolution training: the module on real HDTF pairs, the `sr` stage with base-model LQ renders,
`python -m src.upscale`, and the EMA callback."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from src import train, upscale
from src.config import compose
from src.modules.sr_module import TemporalSRModule
from src.video_io import probe, read_audio, write_video


def _hdtf_window(fixtures_dir, frames: int = 4) -> dict:
    root = fixtures_dir / "hdtf_sr_pairs"
    names = sorted((root / "lq_256" / "clip0").glob("*.png"))[:frames]
    lq = [cv2.resize(cv2.imread(str(n))[:, :, ::-1], (64, 64), interpolation=cv2.INTER_AREA) for n in names]
    hq = [cv2.resize(cv2.imread(str(root / "gt_512" / "clip0" / n.name))[:, :, ::-1], (128, 128),
                     interpolation=cv2.INTER_AREA) for n in names]
    t = lambda x: torch.from_numpy(np.stack(x)).permute(0, 3, 1, 2).float().div(255)[None]  # noqa: E731
    return {"lq": t(lq), "hq": t(hq), "valid": torch.ones(1, frames, dtype=torch.bool)}


def test_short_training_on_real_pairs_lowers_the_l1_loss(fixtures_dir):
    torch.manual_seed(0)
    cfg = OmegaConf.to_container(compose("sr", ["model=tiny"]), resolve=True)
    module = TemporalSRModule(cfg, total_steps=20)
    batch = _hdtf_window(fixtures_dir)
    opt = module.configure_optimizers()["optimizer"]
    l1 = []
    for _ in range(20):
        loss, losses, _, _ = module.model_step(batch)
        l1.append(float(losses["l1"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert l1[-1] < 0.9 * l1[0]
    assert float(module.net.decoder.to_rgbs[-1].modulated_conv.weight.abs().sum()) > 0  # moved off plain bicubic


def test_padded_frames_do_not_count(fixtures_dir):
    cfg = OmegaConf.to_container(compose("sr", ["model=tiny"]), resolve=True)
    module = TemporalSRModule(cfg, total_steps=1)
    batch = _hdtf_window(fixtures_dir)
    loss_all = module.model_step(batch)[0]
    spoiled = dict(batch, hq=batch["hq"].clone(), valid=torch.tensor([[True, True, True, False]]))
    spoiled["hq"][0, 3] = 1.0  # a padding frame with a wrong target: masked out
    first3 = dict(batch, lq=batch["lq"][:, :3], hq=batch["hq"][:, :3], valid=batch["valid"][:, :3])
    assert not torch.isclose(module.model_step(spoiled)[0], loss_all)
    # the masked window scores the valid frames only (the network sees the padded frame as a neighbour, so
    # compare against the plain per-frame loss of those frames at initialisation, where mixing is zero)
    assert torch.isclose(module.model_step(spoiled)[0], module.model_step(first3)[0], rtol=1e-4)


def test_x4_bicubic_inputs_and_validation_baseline(fixtures_dir):
    # sr.lq=bicubic degrades the real frames by the model's scale; an untrained x4 model equals bicubic x4
    cfg = OmegaConf.to_container(compose("sr", ["model=tiny", "model.sr.scale=4", "sr.lq=bicubic"]), resolve=True)
    module = TemporalSRModule(cfg, total_steps=1).eval()
    batch = _hdtf_window(fixtures_dir, frames=3)
    assert module.inputs(batch).shape == (1, 3, 3, 32, 32)
    with torch.no_grad():
        module.validation_step(batch, 0)
    psnr = {k: float(m.compute()) for k, m in module.psnr.items()}
    assert psnr["sr"] == pytest.approx(psnr["bicubic"], abs=1e-4) and 10 < psnr["bicubic"] < 40
    assert module.last_val_images["output"].shape[-2:] == (128, 128)


@pytest.mark.slow
def test_sr_stage_renders_lq_trains_and_upscales(shards, tiny_generator_ckpt, tmp_path, capsys):
    common = ["model=tiny", "logger=disabled", f"data.root={shards}", f"output_root={tmp_path}", "run_name=s",
              "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.max_epochs=1",
              "trainer.enable_progress_bar=false", "sr.window=3"]
    assert train.main(["sr", *common, "model=demo", f"sr.init_base={tiny_generator_ckpt}"]) == 2
    assert "renders 64x64 frames but this SR model" in capsys.readouterr().err
    assert train.main(["sr", *common, f"sr.init_base={tiny_generator_ckpt}"]) == 0
    run = tmp_path / "sr" / "s"
    record = json.loads((run / "stages.json").read_text())["stages"]["sr"]
    assert record["status"] == "done" and record["init"] == str(tiny_generator_ckpt) and record["lq"] == "base"
    lq_manifest = json.loads((run / "lq_shards" / "manifest.json").read_text())
    source = json.loads((shards / "manifest.json").read_text())
    with_512 = sum(c["has_sr"] for c in source["clips"])
    assert sum(s["clips"] for s in lq_manifest["splits"].values()) == with_512
    assert lq_manifest["skipped_without_512"] == len(source["clips"]) - with_512
    header, row = (run / "csv" / "metrics.csv").read_text().splitlines()[-2:]
    metrics = dict(zip(header.split(","), row.split(",")))
    assert float(metrics["val/psnr_bicubic"]) > 5 and float(metrics["val/warp_error_gt"]) >= 0

    ckpt = run / "checkpoints" / "last.ckpt"
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(frames_dir / f"f{i:03d}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert upscale.main(["--checkpoint", str(ckpt), "--input", str(frames_dir), "--output", str(tmp_path / "up")]) == 0
    outs = sorted((tmp_path / "up").iterdir())
    assert [p.name for p in outs] == [f"f{i:03d}.png" for i in range(5)]
    assert cv2.imread(str(outs[0])).shape == (128, 128, 3)
    assert upscale.main(["--checkpoint", str(ckpt), "--input", str(frames_dir), "--output", str(tmp_path / "up")]) == 2
    video = tmp_path / "in.mp4"
    tone = np.sin(np.linspace(0, 400, 16000)).astype(np.float32) * 0.2
    write_video(video, [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(7)], fps=25, audio=tone)
    assert upscale.main(["--checkpoint", str(ckpt), "--input", str(video), "--output", str(tmp_path / "up.mp4")]) == 0
    info = probe(tmp_path / "up.mp4")
    assert (info.width, info.height, info.frames) == (128, 128, 7) and read_audio(tmp_path / "up.mp4") is not None
    big = tmp_path / "big"
    big.mkdir()
    cv2.imwrite(str(big / "a.png"), np.zeros((80, 80, 3), np.uint8))
    assert upscale.main(["--checkpoint", str(ckpt), "--input", str(big), "--output", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    assert upscale.main(["--checkpoint", str(tiny_generator_ckpt), "--input", str(frames_dir), "--output",
                         str(tmp_path / "y")]) == 2


def test_ema_averages_swaps_for_validation_and_round_trips():
    import lightning as L

    from callbacks.ema import EMA

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    module, ema = Tiny(), EMA(decay=0.5)

    class FakeTrainer:
        sanity_checking = False

    ema.on_fit_start(FakeTrainer(), module)
    with torch.no_grad():
        module.w.fill_(1.0)
    ema.on_train_batch_end(FakeTrainer(), module, None, None, 0)
    assert float(ema.shadow["w"]) == pytest.approx(0.5)
    ema.on_validation_start(FakeTrainer(), module)
    assert float(module.w) == pytest.approx(0.5)  # validation sees the average
    ema.on_validation_end(FakeTrainer(), module)
    assert float(module.w) == pytest.approx(1.0)  # training continues from the live weights
    restored = EMA()
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.5 and float(restored.shadow["w"]) == pytest.approx(0.5)


def test_first_frames_cuts_every_per_frame_array(shards):
    from litdata import StreamingDataset

    from data_modules.shards import decode_frames, has_hq, num_frames
    from src.stages.sr_data import first_frames

    item = next(it for it in StreamingDataset(str(shards / "dev")) if has_hq(it))
    cut = first_frames(item, 5)
    assert num_frames(cut) == 5 and len(cut["landmarks"]) == len(cut["align"]) == len(cut["frame_index"]) == 5
    np.testing.assert_array_equal(decode_frames(cut, range(5), hq=True), decode_frames(item, range(5), hq=True))
    np.testing.assert_array_equal(decode_frames(cut, range(5)), decode_frames(item, range(5)))
    assert first_frames(item, None) is item and first_frames(item, 10_000) is item


@pytest.mark.slow
def test_sr_training_clips_gradients_when_configured_and_saves_the_config_that_trained(shards, tmp_path, monkeypatch):
    """sr.grad_clip_norm reaches the Trainer (SR is optimised automatically); config.yaml is the config in the
    checkpoint, LQ shard folder and input size included."""
    from src.checkpoints import read_checkpoint
    from src.training import train

    norms = []
    original = TemporalSRModule.configure_optimizers

    def recording(self):
        out = original(self)
        opt = out["optimizer"] if isinstance(out, dict) else out

        def after_step(optimizer, *_):  # Lightning runs backward and clipping inside step(closure): grads as used
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

        opt.register_step_post_hook(after_step)
        return out

    monkeypatch.setattr(TemporalSRModule, "configure_optimizers", recording)
    clip = 1e-4
    run = train("sr", ["model=tiny", "logger=disabled", f"data.root={shards}", f"output_root={tmp_path}", "run_name=c",
                       "sr.lq=bicubic", "sr.window=3", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
                       "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
                       f"sr.grad_clip_norm={clip}"])
    assert len(norms) == 3 and max(norms) <= clip * 1.001  # unclipped, the first step's norm is far above it
    saved = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    trained = read_checkpoint(run / "checkpoints" / "last.ckpt")["hyper_parameters"]["cfg"]
    assert saved == trained
    assert saved["data"]["resolution"] == 64 and saved["sr"]["lq_root"] == str(shards)


def test_lq_rendering_runs_on_the_trainer_device(shards, tiny_generator_ckpt, tmp_path, monkeypatch):
    """The base model renders SR's LQ frames on the GPU when the trainer trains on GPUs (on this rank's)."""
    from src.errors import UserError
    from src.stages import sr as sr_stage
    from src.stages import sr_data

    cfg = compose("sr", ["model=tiny", f"data.root={shards}", "trainer=gpu", f"sr.init_base={tiny_generator_ckpt}",
                         f"output_root={tmp_path}"])
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            sr_stage.render_device(cfg)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert sr_stage.render_device(cfg) == torch.device("cuda", 1)
    assert sr_stage.render_device(compose("sr", ["model=tiny", f"data.root={shards}"])) == torch.device("cpu")
    seen = {}

    class Rendered(Exception):
        pass

    def fake_render(base, data_root, out, device, max_frames=None):
        seen.update(base=base, out=out, device=device)
        raise Rendered

    monkeypatch.setattr(sr_data, "render_lq_shards", fake_render)
    with pytest.raises(Rendered):
        sr_stage.run_sr(cfg, tmp_path / "run")
    assert seen["device"] == torch.device("cuda", 1) and str(seen["base"]) == str(tiny_generator_ckpt)
    assert seen["out"] == cfg.sr.lq_root
