"""Personalization wall time for a 30 s video at 256 px with the `full` preset.

    python -m benchmarks.bench_personalize_speed [--steps 10] [--device auto]

The 30 s video is a real fixture clip of a held-out person played forwards and backwards until it lasts
30 s (750 frames at 25 fps): real decoding, face tracking and landmarks on every frame. The generator has
the `full` preset's architecture with random weights (speed does not depend on the weights). The run is
`python -m src.personalize` itself, with --steps fine-tuning steps; reported are its preprocessing and
fine-tuning seconds, the seconds per step, and the steps that fit in the paper's 30 s.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import FIXTURES, save


def thirty_second_video(path: Path, seconds: float = 30.0) -> int:
    from src.video_io import probe, read_frames, write_video

    clip = sorted((FIXTURES / "voxceleb2_mini" / "test" / "mp4").glob("*/*/*.mp4"))[0]
    frames = list(read_frames(clip))
    fps = probe(clip).fps
    loop = frames + frames[-2:0:-1]  # ping-pong: no jump at the seam
    n = int(round(seconds * fps))
    write_video(path, [loop[i % len(loop)] for i in range(n)], fps=fps)
    return n


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    from omegaconf import OmegaConf

    from src.checkpoints import generator_checkpoint, save_checkpoint
    from src.config import compose
    from src.models.generator import build_generator
    from src.personalization import PersonalizeOptions, personalize

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames = thirty_second_video(tmp / "person.mp4")
        cfg = OmegaConf.to_container(compose("refine", ["model=full", "loss.perceptual=l1_msssim"]), resolve=True)
        gen = build_generator(OmegaConf.create(cfg["model"]), 128)
        save_checkpoint(generator_checkpoint(gen, cfg, 128), tmp / "full.ckpt")
        t0 = time.time()
        personalize(PersonalizeOptions(tmp / "full.ckpt", [tmp / "person.mp4"], tmp / "out.ckpt", steps=a.steps,
                                       eval_every=a.steps, max_eval_frames=8, device=a.device, identity_backend="dlib"))
        wall = time.time() - t0
        report = json.loads((tmp / "out.report.json").read_text())
    sec = report["seconds"]
    per_step = sec["fine_tune"] / max(report["steps"], 1)
    save("personalize_speed", {
        "command": "python -m benchmarks.bench_personalize_speed "
                   + " ".join(argv if argv is not None else sys.argv[1:]),
        "video": f"{frames} frames (30 s), 256 px crops", "preset": "full (134 M generator), fp32, batch 4",
        "device": report["device"], "steps": report["steps"],
        "preprocess_s": sec["preprocess"], "fine_tune_s": sec["fine_tune"],
        "s_per_step_incl_eval": round(per_step, 2), "total_wall_s": round(wall, 1),
        "steps_in_30_s_of_fine_tuning": round(30 / per_step, 2),
    })


if __name__ == "__main__":
    main()
