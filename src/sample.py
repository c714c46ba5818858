"""Build the embedded sample dataset (src/sample_dataset.py says what it is).

    python -m src.sample --output data/sample [--seed N] [--size PX] ...
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from src.arguments import Parser
from src.errors import UserError, cli_entry
from src.sample_dataset import Settings, build


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = Settings()
    p = Parser(
        prog="python -m src.sample",
        description="Build the embedded sample dataset: synthetic head motion, blinks and speech-like jaw "
        "motion rendered on real face photos shipped by installed packages, as 25 fps H.264 clips with "
        "audio in VoxCeleb2's layout OUT/{dev,test}/mp4/<identity>/<video>/<clip>.mp4.",
    )
    p.add_argument("--output", required=True, type=Path, help="output folder (created; re-runs resume)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (same seed, same dataset)")
    p.add_argument("--size", type=int, default=d.size, help="frame size in pixels (square)")
    p.add_argument("--videos-per-identity", type=int, default=d.videos_per_identity)
    p.add_argument("--clips-per-video", type=int, default=d.clips_per_video)
    p.add_argument("--min-seconds", type=float, default=d.min_seconds)
    p.add_argument("--max-seconds", type=float, default=d.max_seconds)
    p.add_argument("--max-identities", type=int, default=d.max_identities, help="at most this many faces")
    p.add_argument("--test-identities", type=int, default=d.test_identities, help="identities held out in test/")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel encoder processes")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if not 0 < a.min_seconds <= a.max_seconds:
        raise UserError("--min-seconds must be positive and at most --max-seconds")
    if a.size < 128 or a.size % 2:
        raise UserError("--size must be an even number of pixels, at least 128")
    settings = Settings(seed=a.seed, size=a.size, videos_per_identity=a.videos_per_identity,
                        clips_per_video=a.clips_per_video, min_seconds=a.min_seconds, max_seconds=a.max_seconds,
                        max_identities=a.max_identities, test_identities=a.test_identities)
    build(a.output, settings, workers=a.workers, quiet=a.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
