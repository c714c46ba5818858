"""TemporalSR speed: output frames/s at 512 for the `full` preset (and parameter counts per preset).

    python -m benchmarks.bench_sr [--windows 2] [--device auto]

A window of 6 frames of real 256-px fixture crops (HDTF pairs) goes through the network in inference mode;
the first window is a warm-up and is not timed.
"""
from __future__ import annotations

import argparse
import sys
import time

import cv2
import numpy as np
import torch

from benchmarks.common import FIXTURES, save


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    from src.config import compose
    from src.inference import resolve_device
    from src.models.blocks import count_parameters
    from src.models.temporal_sr import build_sr

    counts = {}
    for preset in ("tiny", "demo", "full"):
        m = compose("sr", [f"model={preset}"]).model
        with torch.device("meta"):
            net = build_sr(m)
        counts[preset] = (f"{count_parameters(net) / 1e6:.1f} M ({count_parameters(net.decoder) / 1e6:.1f} M decoder), "
                          f"{net.cfg.in_size} -> {net.cfg.out_size}")
    device = resolve_device(a.device)
    net = build_sr(compose("sr", ["model=full"]).model).to(device).eval()
    names = sorted((FIXTURES / "hdtf_sr_pairs" / "lq_256" / "clip0").glob("*.png"))[:6]
    frames = np.stack([cv2.imread(str(n))[:, :, ::-1] for n in names])
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255)[None].to(device)
    with torch.inference_mode():
        net(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        for _ in range(a.windows):
            net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
    save("sr", {"command": "python -m benchmarks.bench_sr " + " ".join(argv if argv is not None else sys.argv[1:]),
                "parameters": counts, "device": str(device), "window": len(names),
                "full_512_frames_per_s": round(a.windows * len(names) / dt, 3), "precision": "fp32"})


if __name__ == "__main__":
    main()
