"""The GPU path, measured: `make bench-gpu`, sized to finish in about 8 minutes on one GPU.

    python -m benchmarks.bench_gpu [--device cuda] [--preset full] [--steps 30] [--batch-size 8]
                                   [--personalize-steps 300] [--shards outputs/bench/shards_fixtures]

- Training samples/s of the warp and refine stages: a real Lightning Trainer in bf16-mixed on the stage's
  LightningModule, random weights, random uint8 images with a real clip's MediaPipe landmarks (the mesh prior's
  rasterisation depends on a face-shaped mesh), held in memory; the landmark guidance is rendered on the device
  as in training. Peak GPU memory beside it. The L1 + MS-SSIM loss stands in for
  VGG19 (no weights download on a benchmark machine). Beside them, the `pairs` loader's samples/s on the
  fixture shards with the machine's cores (built by bench_preprocess when absent): does the data keep up?
- Inference frames/s of src.inference's own loop (guidance, generator, uint8 frames back on the host): at the
  preset's resolution in fp32 and under bf16 autocast, and with the SR net (to twice the size) after it.
- Personalization wall time for a 30 s video (a fixture clip looped), preprocessing included, at --personalize-steps
  (the command's default).

Rows go to outputs/bench/gpu_<device>.json and, through benchmarks.report, to BENCHMARKS.md. `--device cpu
--preset tiny` with a few steps runs every part at test size (tests/test_bench_gpu.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import torch

from benchmarks.common import FIXTURES, RESULTS, save
from data_modules.guidance import GuidanceDataModule


def _clip() -> Path:
    return sorted((FIXTURES / "voxceleb2_mini" / "test" / "mp4").glob("*/*/*.mp4"))[0]


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def synthetic_batches(n: int, b: int, r: int, id_dim: int, landmarks: torch.Tensor) -> list[dict]:
    """Loader-shaped pair batches (uint8 images, a real clip's landmarks, embeddings), held in memory."""
    g = torch.Generator().manual_seed(0)

    def one(i: int) -> dict:
        image = lambda: torch.randint(0, 256, (b, 3, r, r), generator=g, dtype=torch.uint8)
        return {"source": image(), "driving": image(), "embedding": torch.randn(b, id_dim, generator=g),
                "source_landmarks": landmarks[:1].expand(b, -1, -1).clone(),
                "driving_landmarks": landmarks[(torch.arange(b) + i) % len(landmarks)]}

    return [one(i) for i in range(n)]


class InMemoryPairs(GuidanceDataModule):
    """Batches from memory, turned into float and given their landmark guidance on the device by the DataModule
    hook every stage's data runs through: the training rate includes that rendering, not the loader."""

    def __init__(self, batches: list[dict], resolution: int):
        super().__init__()
        self.batches, self.spec = batches, SimpleNamespace(resolution=resolution)

    def train_dataloader(self):
        from torch.utils.data import DataLoader

        return DataLoader(self.batches, batch_size=None, shuffle=False)


class StepTimes(L.Callback):
    """The time at each batch end (after the device has finished it)."""

    def __init__(self):
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.ends.append(time.perf_counter())


def train_rate(stage: str, preset: str, device: torch.device, steps: int, batch_size: int,
               landmarks: torch.Tensor) -> dict:
    """samples/s of `stage` (warp or refine) over `steps` steps after 3 warm-up steps, and peak GPU memory."""
    from omegaconf import OmegaConf

    from src.config import compose
    from src.modules.refiner_module import RefinerModule
    from src.modules.warping_module import WarpingModule

    cfg = compose(stage, [f"model={preset}", "loss.perceptual=l1_msssim"])
    r, id_dim = cfg.model.resolution, 512
    module = (WarpingModule if stage == "warp" else RefinerModule)(OmegaConf.to_container(cfg, resolve=True), id_dim)
    batches = synthetic_batches(steps + 3, batch_size, r, id_dim, landmarks)
    times = StepTimes()
    _reset_peak(device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                            precision="bf16-mixed" if device.type == "cuda" else "32-true", max_steps=steps + 3,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                            callbacks=[times], default_root_dir=tmp)
        trainer.fit(module, datamodule=InMemoryPairs(batches, r))
    seconds = times.ends[-1] - times.ends[2]
    return {"samples_per_s": round(steps * batch_size / seconds, 1), "batch": batch_size, "resolution": r,
            "precision": trainer.precision, "peak_gpu_gib": _peak_gib(device)}


def loader_rate(shards: Path, resolution: int, batch_size: int, batches: int = 30) -> dict:
    import os

    from data_modules.voxceleb2 import VoxCeleb2DataModule

    workers = min(8, os.cpu_count() or 2)
    dm = VoxCeleb2DataModule(str(shards), mode="pairs", resolution=resolution, batch_size=batch_size,
                             num_workers=workers, samples_per_clip=8, window=6, render=False)
    dm.setup("fit")
    n, t0, seen = 0, None, 0
    while n < batches * batch_size:
        for batch in dm.train_dataloader():
            seen += 1
            if seen == 3:  # after the workers have started
                t0, n = time.perf_counter(), 0
            elif t0 is not None:
                n += len(batch["identity"])
            if n >= batches * batch_size:
                break
    return {"samples_per_s": round(n / (time.perf_counter() - t0), 1), "workers": workers}


def inference_rates(preset: str, device: torch.device, frames: int, batch_size: int) -> dict:
    """frames/s of src.inference's loop at the preset's resolution (fp32, bf16 autocast) and with SR after it."""
    from omegaconf import OmegaConf

    from src.config import compose
    from src.faces.identity import make_embedder
    from src.inference import iter_generate, iter_super_resolve, prepare_driving, prepare_sources
    from src.models.generator import build_generator
    from src.models.temporal_sr import build_sr

    cfg = compose("refine", [f"model={preset}"])
    r = cfg.model.resolution
    torch.manual_seed(0)
    generator = build_generator(cfg.model, 128).to(device).eval()
    source = prepare_sources(FIXTURES / "portraits" / "portrait_a.jpg", r, make_embedder("dlib"), "largest")[0]
    lms = prepare_driving(_clip(), r).landmarks
    lms = lms[np.arange(frames) % len(lms)]
    sr_cfg = compose("sr", [f"model={preset}", f"model.sr.out_size={2 * r}"])
    sr = build_sr(OmegaConf.create(OmegaConf.to_container(sr_cfg.model, resolve=True))).to(device).eval()
    out = {}

    def timed(name: str, run) -> None:
        list(run(min(frames, 2 * batch_size)))  # warm-up (cuDNN autotuning, allocator)
        _reset_peak(device)
        t0 = time.perf_counter()
        n = len(list(run(frames)))
        out[name] = {"frames_per_s": round(n / (time.perf_counter() - t0), 2), "peak_gpu_gib": _peak_gib(device)}

    def plain(n):
        return iter_generate(generator, source, lms[:n], device, batch_size, precision="fp32")

    def bf16(n):  # as src.animate --precision bf16 runs it (autocast, channels_last weights)
        return iter_generate(generator, source, lms[:n], device, batch_size, precision="bf16")

    def with_sr(n):
        return iter_super_resolve(sr, plain(n), sr_cfg.sr.window, device)

    timed(f"{r}_fp32", plain)
    if device.type == "cuda":
        timed(f"{r}_bf16_autocast", bf16)
    timed(f"{2 * r}_with_sr_fp32", with_sr)
    out["batch"] = batch_size
    return out


def personalization(preset: str, device: torch.device, steps: int, seconds: float = 30.0) -> dict:
    from omegaconf import OmegaConf

    from benchmarks.bench_personalize_speed import thirty_second_video
    from src.checkpoints import generator_checkpoint, save_checkpoint
    from src.config import compose
    from src.models.generator import build_generator
    from src.personalization import PersonalizeOptions, personalize

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        thirty_second_video(tmp / "person.mp4", seconds)
        cfg = OmegaConf.to_container(compose("refine", [f"model={preset}", "loss.perceptual=l1_msssim"]), resolve=True)
        save_checkpoint(generator_checkpoint(build_generator(OmegaConf.create(cfg["model"]), 128), cfg, 128),
                        tmp / "base.ckpt")
        _reset_peak(device)
        t0 = time.time()
        personalize(PersonalizeOptions(tmp / "base.ckpt", [tmp / "person.mp4"], tmp / "out.ckpt", steps=steps,
                                       device=str(device), identity_backend="dlib"))
        wall = time.time() - t0
        report = json.loads((tmp / "out.report.json").read_text())
    return {"wall_s": round(wall, 1), "steps": report["steps"], "seconds": report["seconds"],
            "peak_gpu_gib": _peak_gib(device), "goal_30s_for_30s_holds": seconds == 30 and wall <= 30}


def main(argv=None) -> dict:
    from src.personalization import PersonalizeOptions

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="full")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per stage (after 3 warm-up steps)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--frames", type=int, default=250, help="frames per inference measurement")
    p.add_argument("--personalize-steps", type=int, default=PersonalizeOptions.steps)
    p.add_argument("--personalize-seconds", type=float, default=30.0, help="the personalization video's length")
    p.add_argument("--shards", type=Path, default=RESULTS / "shards_fixtures",
                   help="fixture shards for the loader (made from the fixtures when absent)")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device here (pass --device cpu for the test-size run)")
    from src.inference import prepare_driving

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    result = {"command": "python -m benchmarks.bench_gpu " + " ".join(argv if argv is not None else sys.argv[1:]),
              "device": name, "preset": a.preset}
    t_start = time.time()
    from src.config import compose

    landmarks = torch.from_numpy(prepare_driving(_clip(), compose("refine", [f"model={a.preset}"]).model.resolution)
                                 .landmarks)
    for stage in ("warp", "refine"):
        result[f"train_{stage}"] = train_rate(stage, a.preset, device, a.steps, a.batch_size, landmarks)
        print(stage, result[f"train_{stage}"], flush=True)
    if not (a.shards / "manifest.json").exists():
        import os

        from src.preprocessing import preprocess

        preprocess(FIXTURES / "voxceleb2_mini", a.shards, workers=min(8, os.cpu_count() or 2), quiet=True)
    result["loader_pairs"] = loader_rate(a.shards, result["train_refine"]["resolution"], a.batch_size)
    result["inference"] = inference_rates(a.preset, device, a.frames, max(a.batch_size, 16))
    print("inference", result["inference"], flush=True)
    result[f"personalize_{a.personalize_seconds:g}s_video"] = personalization(a.preset, device, a.personalize_steps,
                                                                             a.personalize_seconds)
    result["total_s"] = round(time.time() - t_start)
    save(f"gpu_{device.type}", result)
    return result


if __name__ == "__main__":
    main()
