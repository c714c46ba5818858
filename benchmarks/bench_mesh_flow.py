"""The mesh flow alone (src/faces/mesh_flow.py, the warp's prior) against the classical piecewise-affine baseline of
src.evaluate and copying the source, on the real fixture clips of the preprocessing benchmark's `test` split:
source = each clip's first frame, driving = its next 32 frames. PSNR over the whole frame, at the flow resolution
each preset's warp uses (a quarter of the image), and the flow's cost per batch on this machine's device.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

from benchmarks.common import RESULTS, psnr_u8, save


def main() -> None:
    from litdata import StreamingDataset

    from data_modules.shards import decode_frames
    from src.evaluation import piecewise_affine
    from src.faces.mesh_flow import MeshFlow
    from src.models.warping import warp

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ds = StreamingDataset(str(RESULTS / "shards_fixtures" / "test"))
    items = [ds[i] for i in range(len(ds))]
    mesh = MeshFlow().to(device)
    result = {"command": "python -m benchmarks.bench_mesh_flow", "clips": len(items), "frames_per_clip": 32}
    for r in (64, 128, 256):
        scores = {"piecewise_affine": [], "mesh_flow": [], "copy_source": []}
        for item in items:
            idx = list(range(1, 33))
            src, drv = decode_frames(item, [0], size=r)[0], decode_frames(item, idx, size=r)
            lm = torch.from_numpy(item["landmarks"].astype(np.float32)).to(device)
            baseline = piecewise_affine(src, lm[0].cpu().numpy(), lm[idx].cpu().numpy())
            flow, _ = mesh(lm[:1].expand(len(idx), -1, -1), lm[idx], r // 4)
            s = torch.from_numpy(src).permute(2, 0, 1).float()[None].to(device).expand(len(idx), -1, -1, -1)
            ours = warp(s, flow).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
            for k in range(len(idx)):
                scores["piecewise_affine"].append(psnr_u8(baseline[k], drv[k]))
                scores["mesh_flow"].append(psnr_u8(ours[k], drv[k]))
                scores["copy_source"].append(psnr_u8(src, drv[k]))
        result[f"psnr_{r}px (flow {r // 4}x{r // 4})"] = {k: round(float(np.mean(v)), 2) for k, v in scores.items()}
    # cost: a batch of 8 and of 32 real landmark pairs at 64 x 64 (the flow resolution of a 256 model)
    lm = torch.from_numpy(items[0]["landmarks"].astype(np.float32)).to(device)
    for b in (8, 32):
        src, drv = lm[:1].expand(b, -1, -1), lm[1 : b + 1]
        mesh(src, drv, 64)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            mesh(src, drv, 64)
        if device.type == "cuda":
            torch.cuda.synchronize()
        result[f"ms_per_batch_{b}_at_64px_{device.type}"] = round((time.perf_counter() - t0) / 10 * 1000, 1)
    save("mesh_flow", result)


if __name__ == "__main__":
    sys.exit(main())
