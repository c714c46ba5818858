"""Preprocess talking-head videos into streaming shards.

    python -m src.preprocess --input ROOT --output OUT [--splits dev,test] [--workers N] ...

Input: VoxCeleb2's layout ROOT/{split}/mp4/<identity>/<video>/<clip>.mp4, or a plain folder of video files
(each file its own identity, all in the first split). Per clip: decode (PyAV); detect faces (dlib HOG every
few frames, retrying upsampled for small faces); follow the main face; one stable crop box per clip around
the head; crops at --resolution (and at --sr-resolution when the source has enough pixels); MediaPipe
FaceMesh (478 points) per frame; a 5-point similarity alignment per frame; one identity embedding per clip.

Two phases, both resumable:
  1. per clip -> OUT/.work/<split>/<identity>/<video>/<clip>.npz (or .reject.json), written atomically;
     finished clips are skipped on a re-run;
  2. pack -> litdata chunks in OUT/<split>/, then OUT/manifest.json and OUT/rejects.jsonl (written last).
No pickle anywhere: arrays in .npz (allow_pickle=False), metadata in JSON.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from src.arguments import Parser, bounded, count, positive_float, positive_int
from src.errors import cli_entry
from src.faces.identity import BACKENDS
from src.preprocessing import Options, preprocess


def parse_args(argv):
    d = Options()
    p = Parser(prog="python -m src.preprocess", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, type=Path, help="VoxCeleb2-style root or a folder of videos")
    p.add_argument("--output", required=True, type=Path, help="shard folder (re-runs resume)")
    p.add_argument("--splits", default="dev,test",
                   help="comma-separated splits to process (default dev,test); in VoxCeleb2's layout each must exist")
    p.add_argument("--resolution", type=bounded(int, 16, 4096), default=d.resolution,
                   help="crop side in px, in [16, 4096] (default %(default)s)")
    p.add_argument("--sr-resolution", type=bounded(int, 16, 4096), default=d.sr_resolution,
                   help="SR crop side in px, in [16, 4096] (default %(default)s)")
    p.add_argument("--sr-min-scale", type=positive_float, default=d.sr_min_scale,
                   help="store the SR crop when the source crop is at least this fraction of --sr-resolution, > 0")
    p.add_argument("--workers", type=positive_int, default=min(2, os.cpu_count() or 1), help=">= 1")
    p.add_argument("--identity-backend", default="auto", choices=BACKENDS)
    p.add_argument("--max-frames-per-clip", type=count, default=0, help="0: all frames (default)")
    p.add_argument("--min-frames", type=positive_int, default=d.min_frames,
                   help="fewer frames with landmarks reject a clip, >= 1 (default %(default)s)")
    p.add_argument("--min-face", type=positive_int, default=d.min_face,
                   help="smallest usable face box in source pixels, >= 1 (default %(default)s)")
    p.add_argument("--detect-every", type=positive_int, default=d.detect_every,
                   help="run the face detector every N frames, >= 1 (default %(default)s)")
    p.add_argument("--keep-damaged", action="store_true",
                   help="keep a clip that decodes to fewer frames than its container declares (default: reject it)")
    p.add_argument("--num-nodes", type=positive_int, default=1)
    p.add_argument("--node-rank", type=count, default=0, help="in [0, --num-nodes)")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def run(argv=None) -> dict | None:
    """The manifest (None while other nodes' clips are pending) of a command line's preprocessing."""
    a = parse_args(argv)
    opts = Options(resolution=a.resolution, sr_resolution=a.sr_resolution, sr_min_scale=a.sr_min_scale,
                   max_frames=a.max_frames_per_clip, min_frames=a.min_frames, min_face=a.min_face,
                   detect_every=a.detect_every, identity_backend=a.identity_backend, keep_damaged=a.keep_damaged)
    return preprocess(a.input, a.output, tuple(a.splits.split(",")), opts, a.workers, a.num_nodes, a.node_rank,
                      a.quiet)


@cli_entry
def main(argv=None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
