"""The open mouth: how generator checkpoints render a mouth that the driving frame opens over a closed source mouth,
against the piecewise-affine mesh warp, on every frame of each held-out clip.

    python -m benchmarks.eval_mouth --checkpoint before=A.ckpt --checkpoint after=B.ckpt \
        --data outputs/bench/shards_fixtures [--grid outputs/bench/mouth.png]

Each clip is driven from its frame 0 (as src.evaluate does). The frames scored are those whose `mouth_unseen` area
(src.models.warping.prior_inputs: the driving opening the mesh-warped source cannot show) is in the clip's top
quarter and at least --min-pixels at the model's resolution. Reported: PSNR over the mouth region (the filled
outer lip contour enlarged 1.4x, src/faces/render.py: region_masks) and over the whole frame, on those frames.
--grid writes each clip's two widest-open frames, cropped about the mouth, as rows of: source, driving, mesh warp,
then each checkpoint in the order given.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import psnr_u8, save


def main(argv=None) -> None:
    import cv2
    import torch
    from litdata import StreamingDataset

    from data_modules.shards import decode_frames, num_frames
    from src.checkpoints import load_generator
    from src.evaluation import piecewise_affine
    from src.faces.mesh_flow import MeshFlow
    from src.faces.render import region_masks
    from src.inference import Source, generate
    from src.models.warping import prior_inputs

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH",
                   help="a generator checkpoint and its column name (repeat for several)")
    p.add_argument("--data", required=True, help="preprocessed shards (python -m src.preprocess)")
    p.add_argument("--split", default="test")
    p.add_argument("--min-pixels", type=float, default=4.0, help="least unseen mouth area of a scored frame")
    p.add_argument("--grid", type=Path, help="PNG of the widest-open frames")
    p.add_argument("--name", default="mouth", help="the table's name")
    a = p.parse_args(argv)
    named = [c.split("=", 1) if "=" in c else (Path(c).stem, c) for c in a.checkpoint]
    generators = {name: load_generator(path)[:2] for name, path in named}
    sizes = {cfg["model"]["resolution"] for _, cfg in generators.values()}
    if len(sizes) != 1:
        raise SystemExit(f"the checkpoints have different resolutions ({sorted(sizes)}): compare one size at a time")
    r = sizes.pop()
    t0 = time.time()
    methods = ["piecewise_affine", *generators]
    scores = {m: {"mouth_psnr": [], "frame_psnr": []} for m in methods}
    rows, scored, mesh = [], 0, MeshFlow()
    ds = StreamingDataset(str(Path(a.data) / a.split))
    for i in range(len(ds)):
        item = ds[i]
        frames = list(range(1, num_frames(item)))
        lm = item["landmarks"].astype(np.float32)
        source, driving = decode_frames(item, [0], size=r)[0], decode_frames(item, frames, size=r)
        points = torch.from_numpy(lm)
        with torch.no_grad():
            unseen = prior_inputs(mesh, points[:1], points[frames], r, mouth=True)["mouth_unseen"]
        unseen = unseen.flatten(1).sum(1).numpy()
        mouth = region_masks(points[frames], r)[1][:, 0].numpy()
        src = Source(source, lm[0], item["embedding"].astype(np.float32))
        outputs = {"piecewise_affine": np.stack(piecewise_affine(source, lm[0], lm[frames]))}
        for name, (generator, _) in generators.items():
            outputs[name] = np.stack(generate(generator, src, lm[frames], torch.device("cpu"), 8, progress=False))
        chosen = np.nonzero(unseen >= max(a.min_pixels, np.percentile(unseen, 75)))[0]
        scored += len(chosen)
        for m, out in outputs.items():
            scores[m]["mouth_psnr"] += [psnr_u8(out[j], driving[j], mouth[j]) for j in chosen]
            scores[m]["frame_psnr"] += [psnr_u8(out[j], driving[j]) for j in chosen]
        for j in np.argsort(-unseen)[:2]:
            cx, cy = (lm[frames[j], [61, 291], :2].mean(0) * r).astype(int)
            h = r // 4

            def crop(im, cx=cx, cy=cy, h=h):
                padded = np.pad(im, ((h, h), (h, h), (0, 0)))[cy : cy + 2 * h, cx : cx + 2 * h]
                return cv2.resize(padded, (4 * h, 4 * h), interpolation=cv2.INTER_NEAREST)

            rows.append(np.concatenate([crop(source), crop(driving[j]), *(crop(outputs[m][j]) for m in methods)], 1))
    if not scored:
        raise SystemExit(f"no frame of {a.data}/{a.split} opens the mouth over a closed source mouth")
    result = {"command": "python -m benchmarks.eval_mouth " + " ".join(argv if argv is not None else sys.argv[1:]),
              "frames_scored": f"{scored} frames of {len(ds)} clips at {r} px",
              "mouth_psnr": {m: round(float(np.mean(s["mouth_psnr"])), 2) for m, s in scores.items()},
              "frame_psnr": {m: round(float(np.mean(s["frame_psnr"])), 2) for m, s in scores.items()}}
    if a.grid:
        a.grid.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(a.grid), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))
        result["grid"] = f"{a.grid} (columns: source, driving, {', '.join(methods)})"
    result["eval_s"] = round(time.time() - t0, 1)
    save(a.name, result)


if __name__ == "__main__":
    main()
