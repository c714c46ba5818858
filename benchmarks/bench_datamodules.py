"""Samples/s of each VoxCeleb2DataModule mode at 256 with 2 loader workers, on the fixture shards
(built by bench_preprocess), and the cost of rendering the landmark guidance of a batch on the CPU."""
from __future__ import annotations

import sys
import time

from benchmarks.common import RESULTS, save
from data_modules.guidance import render_guidance
from data_modules.voxceleb2 import VoxCeleb2DataModule
from src.faces.render import LandmarkRenderer


def loader_rate(mode: str, batches: int = 40, batch_size: int = 8) -> float:
    dm = VoxCeleb2DataModule(str(RESULTS / "shards_fixtures"), mode=mode, resolution=256, batch_size=batch_size,
                             num_workers=2, samples_per_clip=8, window=6, render=False)
    dm.setup("fit")
    n, t0, it = 0, None, 0
    while n < batches * batch_size:
        for batch in dm.train_dataloader():
            it += 1
            if it == 3:  # after the workers started and warmed up
                t0, n = time.perf_counter(), 0
            elif t0 is not None:
                n += len(batch["identity"])
            if n >= batches * batch_size:
                break
    return n / (time.perf_counter() - t0)


def main() -> None:
    rates = {mode: round(loader_rate(mode), 1) for mode in ("pairs", "episodes", "windows")}
    dm = VoxCeleb2DataModule(str(RESULTS / "shards_fixtures"), mode="pairs", resolution=256, batch_size=8,
                             num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    renderer = LandmarkRenderer()
    render_guidance(dict(batch), renderer, 256)
    t0 = time.perf_counter()
    for _ in range(5):
        render_guidance(dict(batch), renderer, 256)
    render_ms = (time.perf_counter() - t0) / 5 * 1000
    save("datamodules", {
        "command": "python -m benchmarks.bench_datamodules",
        "resolution": 256, "loader_workers": 2, "batch_size": 8,
        "samples_per_s": rates, "episode_note": "an episode item holds 1 + 4 support + 4 query frames",
        "render_guidance_ms_per_batch_cpu": round(render_ms, 1),
    })


if __name__ == "__main__":
    sys.exit(main())
