"""Stage 1: parameter counts per preset; for the `full` preset at 256 on this machine, training samples/s
of the refine stage (generator + discriminator step) and inference frames/s of the generator.

The loss here is the L1 + MS-SSIM substitute: VGG19 weights cannot be downloaded on the benchmark machine,
so the VGG forward of the real perceptual loss is not in these timings. Images are random; the landmarks the mesh
prior warps by are a real clip's, from the preprocessing benchmark's shards (run bench_preprocess first)."""
from __future__ import annotations

import sys
import time

import torch
from omegaconf import OmegaConf

from benchmarks.common import RESULTS, save
from src.config import compose
from src.models.blocks import count_parameters
from src.modules.common import generator_inputs
from src.modules.refiner_module import RefinerModule


def real_landmarks(n: int) -> torch.Tensor:
    """(n, 478, 3) consecutive MediaPipe landmark sets of a real fixture clip (the preprocessing benchmark's shards):
    the mesh prior's cost depends on a face-shaped mesh, which random points are not."""
    import numpy as np
    from litdata import StreamingDataset

    item = StreamingDataset(str(RESULTS / "shards_fixtures" / "test"))[0]
    return torch.from_numpy(item["landmarks"][:n].astype(np.float32))


def fake_batch(b: int, r: int, id_dim: int) -> dict:
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.rand(*s, generator=g)
    lms = real_landmarks(b + 1)
    return {"source": rand(b, 3, r, r), "driving": rand(b, 3, r, r), "source_lmk_img": rand(b, 3, r, r),
            "driving_lmk_img": rand(b, 3, r, r), "embedding": torch.randn(b, id_dim, generator=g),
            "driving_gaze": rand(b, 2, r, r), "driving_eye_mask": rand(b, 1, r, r), "driving_mouth_mask": rand(b, 1, r,
                                                                                                               r),
            "source_landmarks": lms[:1].expand(b, -1, -1), "driving_landmarks": lms[1:]}


def main() -> None:
    counts = {}
    for preset in ("tiny", "demo", "full"):
        cfg = compose("refine", [f"model={preset}", "loss.perceptual=l1_msssim"])
        m = RefinerModule(OmegaConf.to_container(cfg, resolve=True), 512)
        counts[preset] = {"resolution": cfg.model.resolution,
                          "warp_M": round(count_parameters(m.generator.warper) / 1e6, 2),
                          "refiner_M": round(count_parameters(m.generator.refiner) / 1e6, 2),
                          "generator_M": round(count_parameters(m.generator) / 1e6, 2),
                          "discriminator_M": round(count_parameters(m.discriminator) / 1e6, 2)}
    cfg = compose("refine", ["model=full", "loss.perceptual=l1_msssim"])
    module = RefinerModule(OmegaConf.to_container(cfg, resolve=True), 512)
    (opt_g, opt_d), _ = module.configure_optimizers()
    batch_size = 2
    batch = fake_batch(batch_size, 256, 512)
    from src.losses.gan import lsgan_discriminator_loss

    def train_step():
        losses, out = module.model_step(batch)
        real, _ = module.discriminator(batch["driving"], batch["driving_lmk_img"])
        fake, _ = module.discriminator(out["output"].detach(), batch["driving_lmk_img"])
        opt_g.zero_grad()
        opt_d.zero_grad()
        (sum(losses.values()) + lsgan_discriminator_loss(real, fake)).backward()
        opt_g.step()
        opt_d.step()

    train_step()  # warm-up
    n = 3
    t0 = time.perf_counter()
    for _ in range(n):
        train_step()
    train_rate = n * batch_size / (time.perf_counter() - t0)
    gen = module.generator.eval()
    one = {k: v[:1] for k, v in batch.items()}
    with torch.no_grad():
        gen(**generator_inputs(one))
        t0 = time.perf_counter()
        for _ in range(5):
            gen(**generator_inputs(one))
        infer_rate = 5 / (time.perf_counter() - t0)
    save("stage1", {
        "command": "python -m benchmarks.bench_stage1",
        "parameters": {p: f"{c['generator_M']} M generator ({c['warp_M']} warp + {c['refiner_M']} refiner), "
                          f"{c['discriminator_M']} M D at {c['resolution']} px" for p, c in counts.items()},
        "full_256_train_samples_per_s": round(train_rate, 3), "train_batch_size": batch_size,
        "full_256_inference_frames_per_s": round(infer_rate, 3),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "note": "L1+MS-SSIM loss (no VGG19 weights offline); fp32",
    })


if __name__ == "__main__":
    sys.exit(main())
